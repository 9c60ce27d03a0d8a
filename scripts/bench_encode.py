"""Encoding speed and accuracy of the encoder variants on XQuAD-R (CPU).

For each variant: texts/s encoding the candidate sentences (wall clock, and the process CPU time,
which is less disturbed when the machine is shared), then agreement with the fp32 reference:
cosine per text, max |diff|, top-1 agreement en->en, and Mo / Cr / Mul mAP from the project's
own evaluation (hybridir.evaluate + hybridir.metrics).

Variants:
  fp32-loop       PyTorch fp32, batches in input order (no length bucketing)
  fp32            PyTorch fp32, length-bucketed (encode_texts precision fp32)
  bf16            bf16 autocast, bucketed (precision bf16)
  torch-int8      torch.ao quantize_dynamic on every Linear (textbook dynamic int8), bucketed
  onnx-fp32       ONNX Runtime fp32 export, bucketed
  onnx-int8-plain ONNX Runtime dynamic int8 on every MatMul, bucketed
  int8            ONNX Runtime, SmoothQuant + int8 except the FFN output (precision int8)

Examples:
  .venv/bin/python scripts/bench_encode.py --queries-per-lang 100 --pool kept_contexts
  .venv/bin/python scripts/bench_encode.py --variants fp32,int8 --threads 1,2
  (all 13,014 candidates and 1,190 questions per language: omit --queries-per-lang / --pool)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hybridir.evaldata import build_dataset  # noqa: E402
from hybridir.fetch import resolve_mirror  # noqa: E402
from hybridir.encoder_dir import load_encoder, read_settings  # noqa: E402
from hybridir.modeling import encode_with, onnx_runner, torch_runner  # noqa: E402

VARIANTS = ("fp32-loop", "fp32", "bf16", "torch-int8", "onnx-fp32", "onnx-int8-plain", "int8")


def make_encoder(variant: str, model: torch.nn.Module, tokenizer, settings: dict, batch_size: int,
                 max_length: int) -> Callable[[list[str], str], np.ndarray]:
    """variant -> encode(texts, prefix); any one-off preparation (export, quantisation) happens here."""
    bucketing, autocast = variant != "fp32-loop", variant == "bf16"
    if variant in ("fp32-loop", "fp32", "bf16"):
        run = torch_runner(model)
    elif variant == "torch-int8":
        from torch.ao.quantization import quantize_dynamic
        import copy
        run = torch_runner(quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8))
    elif variant == "onnx-fp32":
        run = onnx_runner(model, tokenizer, int8=False, smooth=False)
    elif variant == "onnx-int8-plain":
        run = onnx_runner(model, tokenizer, int8=True, smooth=False, keep_ffn_out_fp32=False)
    elif variant == "int8":
        run = onnx_runner(model, tokenizer, int8=True, smooth=True, keep_ffn_out_fp32=True)
    else:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")

    def encode(texts: list[str], prefix: str) -> np.ndarray:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return encode_with(run, tokenizer, texts, prefix=prefix, pooling=settings["pooling"],
                               max_length=max_length, batch_size=batch_size, bucketing=bucketing)
    return encode


def retrieval_scores(tables, q: np.ndarray, c: np.ndarray) -> dict[str, float]:
    from hybridir.encode import Embeddings
    from hybridir.evaluate import evaluate
    from hybridir.metrics import summarise

    emb = Embeddings(tables.queries[["lang", "qid"]].astype(str).reset_index(drop=True), q,
                     tables.candidates[["lang", "cid"]].astype(str).reset_index(drop=True), c, {})
    summary = summarise(evaluate(tables, emb), sorted(tables.candidates["lang"].unique()))
    return {k: round(summary[k], 4) for k in ("mo", "cr", "mul")}


def top1_en(tables, q: np.ndarray, c: np.ndarray) -> np.ndarray:
    qi = np.flatnonzero(tables.queries["lang"].to_numpy() == "en")
    ci = np.flatnonzero(tables.candidates["lang"].to_numpy() == "en")
    return ci[(q[qi] @ c[ci].T).argmax(axis=1)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="models/base/e5-small",
                    help="encoder directory (create it with `hybridir import-encoder`)")
    ap.add_argument("--mirror", default=None, help="raw data directory (default: data/raw, else the mirror)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", default=str(torch.get_num_threads()), help="comma list of torch/ORT thread counts")
    ap.add_argument("--queries-per-lang", type=int, default=None, help="subsample questions (default: all 1,190)")
    ap.add_argument("--pool", choices=("full", "kept_contexts"), default="full",
                    help="kept_contexts: only the paragraphs of the kept questions (quick runs)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")

    raw = Path(args.mirror) if args.mirror else (Path("data/raw") if Path("data/raw").is_dir() else resolve_mirror())
    if raw is None:
        raise SystemExit("no raw data: run `hybridir fetch` or pass --mirror")
    tables = build_dataset(raw, "xquad_r", max_queries_per_lang=args.queries_per_lang, pool=args.pool)
    queries, candidates = tables.queries["text"].tolist(), tables.candidates["text"].tolist()
    tokenizer, model = load_encoder(args.model_dir)
    settings = read_settings(args.model_dir)
    variants = args.variants.split(",")
    if "fp32" not in variants:
        variants.insert(0, "fp32")  # the reference
    variants.sort(key=lambda v: v != "fp32")
    print(f"XQuAD-R: {len(queries)} questions, {len(candidates)} candidates; load {os.getloadavg()[0]:.1f}; "
          f"cores {os.cpu_count()}", flush=True)

    results, ref = [], None
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for variant in variants:
            t0 = time.perf_counter()
            encode = make_encoder(variant, model, tokenizer, settings, args.batch_size, args.max_length)
            setup_s = time.perf_counter() - t0
            wall0, cpu0, load0 = time.perf_counter(), time.process_time(), os.getloadavg()[0]
            c = encode(candidates, settings["passage_prefix"])
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            q = encode(queries, settings["query_prefix"])
            if ref is None:
                ref = (q, c, top1_en(tables, q, c), retrieval_scores(tables, q, c))
            both, ref_both = np.vstack([q, c]), np.vstack(ref[:2])
            cos = (both * ref_both).sum(axis=1)
            scores = retrieval_scores(tables, q, c)
            row = {
                "variant": variant, "threads": threads, "texts": len(candidates),
                "texts_per_s": round(len(candidates) / wall, 1),
                "texts_per_cpu_s": round(len(candidates) / cpu, 1), "setup_s": round(setup_s, 1),
                "load_avg": round((load0 + os.getloadavg()[0]) / 2, 1),
                "cos_min": round(float(cos.min()), 5), "cos_mean": round(float(cos.mean()), 5),
                "max_abs_diff": round(float(np.abs(both - ref_both).max()), 5),
                "top1_en_agree": round(float((top1_en(tables, q, c) == ref[2]).mean()), 4),
                **scores, **{f"d_{k}": round(scores[k] - ref[3][k], 4) for k in ("mo", "cr", "mul")},
            }
            results.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
