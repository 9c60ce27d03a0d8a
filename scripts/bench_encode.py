"""Encoding speed and accuracy on XQuAD-R (CPU): the project's paths against the tools a user would
pick instead, measured in one run, interleaved.

Each variant runs in its own worker process (its own Python, so sentence-transformers' backends can
come from a separate environment), which builds its encoder once (setup: export, quantisation) and then
waits. The driver runs rounds; in each round every worker, one at a time and in a rotated order,
encodes the candidate sentences while the others sleep, so all variants see the same machine state and
drift in load spreads over all of them. Printed per variant: median texts/s over the rounds (wall
clock), texts per CPU-second of the worker, the speed-up over the plain loop, the one-off setup, and
agreement with the fp32 reference: min cosine and Mo / Cr / Mul mAP deltas from the project's own
evaluation (hybridir.evaluate.scoring + hybridir.evaluate.metrics).

Variants:
  fp32-loop        PyTorch fp32, batches in input order (the plain transformers loop)
  fp32             PyTorch fp32, length-bucketed (evaluate.precision fp32)
  torch-bf16       PyTorch bf16 autocast, bucketed
  bf16             OpenVINO, bf16 inference precision, bucketed (precision bf16 on the CPU; auto
                   where the CPU has native bf16)
  int8             ONNX Runtime, SmoothQuant + int8 except the FFN output (precision int8; auto on
                   CPUs without native bf16)
  onnx-int8-plain  ONNX Runtime dynamic int8 on every MatMul (why int8 smooths first)
  bf16-split, int8-split  bf16 / int8 with the graph split after --split layers (train.freeze_layers)
                   and the lower layers' states already kept (modeling.lower_states): what encoding a
                   trained model costs once a model with the same lower layers was encoded (its
                   set-up includes that first, state-keeping pass)
  st-torch         sentence-transformers, default backend
  st-onnx          sentence-transformers backend="onnx" (optimum export, ONNX Runtime fp32)
  st-onnx-qint8    st-onnx after export_dynamic_quantized_onnx_model(..., "avx512_vnni")
  st-openvino      sentence-transformers backend="openvino" (OpenVINO's default precision)
  st-openvino-int8w  st-openvino with int8 weights (OVWeightQuantizationConfig(bits=8), data-free)

The st-* variants need optimum: `pip install "optimum-onnx[onnxruntime]"` (st-onnx*) and
`pip install "optimum-intel[openvino]"` (st-openvino*). Their transformers pins differ from each other
and from this project's, so give each its own environment with --python VARIANT=PYTHON
(README "Speed" has the commands); a variant whose worker cannot start is reported and skipped.

Examples:
  python scripts/bench_encode.py --queries-per-lang 50 --pool kept_contexts
  python scripts/bench_encode.py --variants fp32,bf16,int8 --rounds 5
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VARIANTS = ("fp32-loop", "fp32", "torch-bf16", "bf16", "int8", "onnx-int8-plain", "bf16-split", "int8-split",
            "st-torch", "st-onnx", "st-onnx-qint8", "st-openvino", "st-openvino-int8w")
# every variant's worker stays alive for the rounds (1-3.6 GB each): these 9 fit 24 GB, 11 did not
DEFAULT = ("fp32-loop", "fp32", "bf16", "bf16-split", "int8", "st-onnx", "st-onnx-qint8", "st-openvino",
           "st-openvino-int8w")


# ---------------------------------------------------------------- worker side

def project_encoder(variant: str, model_dir: str, batch_size: int, max_length: int, split: int, work: Path
                    ) -> Callable[[list[str], str], np.ndarray]:
    import torch

    from hybridir.model.encoder_dir import load_encoder, read_settings
    from hybridir.model.modeling import CACHE_ENV, encode_texts, encode_with, onnx_runner, openvino_runner, torch_runner

    tokenizer, model = load_encoder(model_dir)
    pooling = read_settings(model_dir)["pooling"]
    if variant.endswith("-split"):   # the pipeline's own path, with a scratch cache
        os.environ[CACHE_ENV] = str(work / "cache")
        return lambda texts, prefix: encode_texts(
            model, tokenizer, texts, prefix=prefix, pooling=pooling, max_length=max_length, batch_size=batch_size,
            precision=variant.removesuffix("-split"), cache=work / "cache" / "runner", split=split)
    runners = {
        "fp32-loop": lambda: torch_runner(model), "fp32": lambda: torch_runner(model),
        "torch-bf16": lambda: torch_runner(model), "bf16": lambda: openvino_runner(model),
        "int8": lambda: onnx_runner(model, tokenizer),
        "onnx-int8-plain": lambda: onnx_runner(model, tokenizer, smooth=False, keep_ffn_out_fp32=False),
    }
    run = runners[variant]()

    def encode(texts: list[str], prefix: str) -> np.ndarray:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant == "torch-bf16"):
            return encode_with(run, tokenizer, texts, prefix=prefix, pooling=pooling, max_length=max_length,
                               batch_size=batch_size, bucketing=variant != "fp32-loop")
    return encode


def st_encoder(variant: str, model_dir: str, batch_size: int, max_length: int, work: Path
               ) -> Callable[[list[str], str], np.ndarray]:
    """sentence-transformers on a copy of the model directory (its exports write into the directory)."""
    import sentence_transformers as st

    copy = work / "model"
    shutil.copytree(model_dir, copy)
    if int(st.__version__.split(".")[0]) < 6:   # the module paths before sentence-transformers 6
        modules = json.loads((copy / "modules.json").read_text())
        for m in modules:
            m["type"] = "sentence_transformers.models." + m["type"].rsplit(".", 1)[1]
        (copy / "modules.json").write_text(json.dumps(modules))
        config = json.loads((copy / "sentence_bert_config.json").read_text())
        (copy / "sentence_bert_config.json").write_text(json.dumps(
            {k: config[k] for k in ("max_seq_length", "do_lower_case") if k in config}))
        pooling = json.loads((copy / "1_Pooling" / "config.json").read_text())
        pooling["word_embedding_dimension"] = pooling.pop("embedding_dimension", None)
        (copy / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
        tok = json.loads((copy / "tokenizer_config.json").read_text())   # transformers 5's class name
        (copy / "tokenizer_config.json").write_text(json.dumps({**tok, "tokenizer_class": "PreTrainedTokenizerFast"}))
    backend = {"st-torch": "torch"}.get(variant, variant.removeprefix("st-").split("-")[0])
    model = st.SentenceTransformer(str(copy), backend=backend, device="cpu")
    if variant == "st-onnx-qint8":
        st.export_dynamic_quantized_onnx_model(model, "avx512_vnni", str(copy))
        model = st.SentenceTransformer(str(copy), backend="onnx", device="cpu",
                                       model_kwargs={"file_name": "onnx/model_qint8_avx512_vnni.onnx"})
    elif variant == "st-openvino-int8w":
        from optimum.intel import OVWeightQuantizationConfig

        model = st.SentenceTransformer(str(copy), backend="openvino", device="cpu", model_kwargs={
            "quantization_config": OVWeightQuantizationConfig(bits=8)})
    model.max_seq_length = max_length

    def encode(texts: list[str], prefix: str) -> np.ndarray:
        return model.encode(texts, prompt=prefix, batch_size=batch_size, normalize_embeddings=True,
                            convert_to_numpy=True)
    return encode


MARK = "@bench "   # worker -> driver lines; libraries print to stdout too


def say(message: dict) -> None:
    print(MARK + json.dumps(message), flush=True)


def hear(proc: subprocess.Popen) -> dict | None:
    """The worker's next message (other output is passed on to stderr); None when it exited."""
    for line in proc.stdout:
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
        sys.stderr.write(line)
    return None


def worker(args: argparse.Namespace) -> int:
    """Build one variant, then for each line "go" on stdin encode the candidates and print timings."""
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(args.threads)
    data = np.load(args.texts, allow_pickle=False)
    candidates, queries = data["candidates"].tolist(), data["queries"].tolist()
    prefixes = json.loads(args.prefixes)
    with tempfile.TemporaryDirectory(prefix="bench-encode-") as tmp:
        t0 = time.perf_counter()
        encode = (st_encoder(args.worker, args.model_dir, args.batch_size, args.max_length, Path(tmp))
                  if args.worker.startswith("st-") else
                  project_encoder(args.worker, args.model_dir, args.batch_size, args.max_length, args.split,
                                  Path(tmp)))
        encode(candidates[:8], prefixes["passage"])  # warm-up (first-call allocation, JIT)
        if args.worker.endswith("-split"):
            encode(candidates, prefixes["passage"])   # keeps the lower layers' states: rounds are hits
        say({"ready": True, "setup_s": time.perf_counter() - t0})
        c = None
        for line in sys.stdin:
            if line.strip() != "go":
                break
            wall0, cpu0 = time.perf_counter(), time.process_time()
            c = encode(candidates, prefixes["passage"])
            say({"wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0})
        q = encode(queries, prefixes["query"])
        np.savez(args.out, queries=np.asarray(q, dtype=np.float32), candidates=np.asarray(c, dtype=np.float32))
    return 0


# ---------------------------------------------------------------- driver side

def retrieval_scores(tables, q: np.ndarray, c: np.ndarray) -> dict[str, float]:
    from hybridir.evaluate.encode import Embeddings
    from hybridir.evaluate.scoring import evaluate
    from hybridir.evaluate.metrics import summarise

    emb = Embeddings(tables.queries[["lang", "qid"]].astype(str).reset_index(drop=True), q,
                     tables.candidates[["lang", "cid"]].astype(str).reset_index(drop=True), c, {})
    summary = summarise(evaluate(tables, emb), sorted(tables.candidates["lang"].unique()))
    return {k: summary[k] for k in ("mo", "cr", "mul")}


class Worker:
    def __init__(self, variant: str, python: str, argv: list[str], out: Path):
        self.variant, self.out, self.error = variant, out, None
        self.proc = subprocess.Popen([python, __file__, "--worker", variant, "--out", str(out), *argv],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = hear(self.proc)
        if ready is None:
            self.error = f"worker exited with {self.proc.wait()} (see its traceback above)"
            self.setup_s = float("nan")
        else:
            self.setup_s = ready["setup_s"]
        self.rounds: list[dict[str, float]] = []

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        result = hear(self.proc)
        if result is None:
            raise RuntimeError(f"{self.variant}: worker exited with {self.proc.wait()}")
        self.rounds.append(result)

    def finish(self) -> dict[str, np.ndarray]:
        self.proc.stdin.close()
        if self.proc.wait() != 0:
            raise RuntimeError(f"{self.variant}: worker failed")
        with np.load(self.out) as data:
            return {k: data[k] for k in data.files}


def run_rounds(workers: list[Worker], variants: list[str], pythons: dict[str, str], argv: list[str],
               tmp: Path, rounds: int) -> dict[str, dict[str, np.ndarray]]:
    """Start a worker per variant (appended to `workers`), run the interleaved rounds, collect vectors."""
    for v in variants:   # set-ups one after another: each gets the machine to itself
        python = next((p for k, p in sorted(pythons.items(), key=lambda kv: -len(kv[0]))
                       if v.startswith(k)), sys.executable)
        w = Worker(v, python, argv, tmp / f"{v}.npz")
        print(f"  {v}: " + (f"ready, setup {w.setup_s:.1f} s" if w.error is None else f"SKIPPED: {w.error}"),
              flush=True)
        workers.append(w)
    live = [w for w in workers if w.error is None]
    for r in range(rounds):
        for w in live[r % len(live):] + live[:r % len(live)]:
            w.go()
    return {w.variant: w.finish() for w in live}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="models/base/e5-small",
                    help="encoder directory (create it with `hybridir import-encoder`)")
    ap.add_argument("--mirror", default=None, help="raw data directory (default: data/raw, else the mirror)")
    ap.add_argument("--variants", default=",".join(DEFAULT), help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--python", action="append", default=[], metavar="VARIANT=PYTHON",
                    help="interpreter for a variant's worker; a prefix matches several (st-onnx=...)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--queries-per-lang", type=int, default=None, help="subsample questions (default: all 1,190)")
    ap.add_argument("--pool", choices=("full", "kept_contexts"), default="full",
                    help="kept_contexts: only the paragraphs of the kept questions (quick runs)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--split", type=int, default=6, help="layers below the split (*-split variants)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--texts", help=argparse.SUPPRESS)
    ap.add_argument("--prefixes", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)

    from hybridir.model.encoder_dir import read_settings
    from hybridir.data.evaldata import build_dataset
    from hybridir.data.fetch import resolve_mirror
    from hybridir.model.modeling import encode_placement

    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    if "fp32" not in variants:
        variants.insert(0, "fp32")  # the reference
    pythons = dict(p.split("=", 1) for p in args.python)
    raw = Path(args.mirror) if args.mirror else (Path("data/raw") if Path("data/raw").is_dir() else resolve_mirror())
    if raw is None:
        raise SystemExit("no raw data: run `hybridir fetch` or pass --mirror")
    tables = build_dataset(raw, "xquad_r", max_queries_per_lang=args.queries_per_lang, pool=args.pool)
    settings = read_settings(args.model_dir)
    auto = encode_placement("auto")[0]
    print(f"XQuAD-R: {len(tables.queries)} questions, {len(tables.candidates)} candidates; {args.threads} "
          f"threads of {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}; evaluate.precision auto = "
          f"{auto} here; {args.rounds} rounds", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-encode-") as tmp:
        texts = Path(tmp) / "texts.npz"
        np.savez(texts, candidates=np.asarray(tables.candidates["text"].tolist(), dtype=str),
                 queries=np.asarray(tables.queries["text"].tolist(), dtype=str))
        common = ["--texts", str(texts), "--model-dir", args.model_dir, "--threads", str(args.threads),
                  "--split", str(args.split),
                  "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
                  "--prefixes", json.dumps({"query": settings["query_prefix"],
                                            "passage": settings["passage_prefix"]})]
        workers: list[Worker] = []
        try:
            vectors = run_rounds(workers, variants, pythons, common, Path(tmp), args.rounds)
        finally:
            for w in workers:
                w.proc.kill()
   # set-ups one after another: each gets the machine to itself

    live = [w for w in workers if w.error is None]
    n = len(tables.candidates)
    ref = vectors["fp32"]
    ref_scores = retrieval_scores(tables, ref["queries"], ref["candidates"])
    speed = {w.variant: n / statistics.median(x["wall_s"] for x in w.rounds) for w in live}
    base = speed.get("fp32-loop", speed["fp32"])
    rows = []
    for w in live:
        v = vectors[w.variant]
        both, ref_both = np.vstack([v["queries"], v["candidates"]]), np.vstack([ref["queries"], ref["candidates"]])
        scores = retrieval_scores(tables, v["queries"], v["candidates"])
        rows.append({
            "variant": w.variant, "texts_per_s": round(speed[w.variant], 1),
            "texts_per_cpu_s": round(n / statistics.median(x["cpu_s"] for x in w.rounds), 1),
            "vs_loop": round(speed[w.variant] / base, 2), "setup_s": round(w.setup_s, 1),
            "rounds_texts_per_s": [round(n / x["wall_s"], 1) for x in w.rounds],
            "cos_min": round(float((both * ref_both).sum(axis=1).min()), 5),
            **{k: round(scores[k], 4) for k in scores},
            **{f"d_{k}": round(scores[k] - ref_scores[k], 4) for k in scores}})
    print(f"\n| variant | texts/s | texts/CPU-s | × plain loop | setup s | min cos | ΔMo | ΔCr | ΔMul |\n"
          f"|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['texts_per_s']} | {r['texts_per_cpu_s']} | {r['vs_loop']} | {r['setup_s']} | "
              f"{r['cos_min']} | {r['d_mo']:+.4f} | {r['d_cr']:+.4f} | {r['d_mul']:+.4f} |")
    print(f"\nfp32 reference: Mo {ref_scores['mo']:.4f} Cr {ref_scores['cr']:.4f} Mul {ref_scores['mul']:.4f}")
    for w in workers:
        if w.error:
            print(f"skipped {w.variant}: {w.error}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
