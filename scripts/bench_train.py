"""Training speed on this machine for a params file: the plain padded step against the fast CPU step,
interleaved in one run (the machine is shared: compare within a run, not across runs).

    .venv/bin/python scripts/bench_train.py                       # params.yaml, its encoder and pairs
    .venv/bin/python scripts/bench_train.py --steps 6 --threads 2

Variants (each its own copy of the model and optimizer, both from the same base weights):
  padded    the plain step: batches padded to their longest text, AdamW (for-loop), validation
            under no_grad on padded batches (train.py before the fast path)
  unpadded  the default CPU step: no computation on padding (hybridir.unpadded), fused AdamW,
            validation in inference_mode on unpadded batches; with train.freeze_layers > 0 the
            validation passes after the first reuse the frozen layers' states (unpadded.FrozenPrefix)
Step i of both uses the same batch (hybrid strategy, seed 0) and the same dropout seed, so the two
loss columns must agree to float rounding (the same trajectory). `--warmup` untimed steps, then
`--steps` timed ones, the variant order alternating per step; then validation passes (train.valid_batches
forward-only batches), alternating too. Prints per-variant median s/step, steps/s, tokens/s (non-padding
tokens), the ratio to `padded`, validation-pass seconds (first / later passes), the load average and peak
RSS, and a projection of a full `hybridir train` run with the fast step.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from hybridir.data.batches import build_batches, read_pairs  # noqa: E402
from hybridir.pipeline.config import load_params  # noqa: E402
from hybridir.model.encoder_dir import load_encoder, read_settings  # noqa: E402
from hybridir.model.unpadded import FrozenPrefix  # noqa: E402
from hybridir.train.trainer import (Texts, TrainConfig, batch_loss, iter_batches, make_optimizer,  # noqa: E402
                            peak_memory_mb, validation_loss, validation_table)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--base", default=None, help="encoder directory (default: models/base/<encoder.name>)")
    ap.add_argument("--pairs", default="data/train/pairs.parquet")
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--batch-size", type=int, default=None, help="override train.batch_size")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="override train.precision")
    ap.add_argument("--freeze-embeddings", choices=["true", "false"], default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--budget-min", type=float, default=15.0)
    ap.add_argument("--valid-reps", type=int, default=2, help="validation passes per variant")
    args = ap.parse_args()

    params = load_params(args.params)
    tp = dict(params["train"])
    if args.batch_size:
        tp["batch_size"] = args.batch_size
    if args.precision:
        tp["precision"] = args.precision
    if args.freeze_embeddings:
        tp["freeze_embeddings"] = args.freeze_embeddings == "true"
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig.from_params(tp)
    if cfg.precision == "auto":
        cfg = replace(cfg, precision="fp32")   # the CPU default
    base = Path(args.base or Path("models/base") / params["encoder"]["name"])
    spec = read_settings(base)
    pairs = read_pairs(args.pairs)
    n = args.warmup + args.steps
    table = build_batches(pairs, strategy="hybrid", alpha=float(tp["alpha"]), batch_size=tp["batch_size"],
                          steps=n, seed=0, langs=params["data"]["train_langs"], log=lambda m: None)
    batches = list(iter_batches(table))
    texts = Texts(pairs, spec)
    device = torch.device("cpu")
    variants = {}
    for name, unpadded, fused in (("padded", False, False), ("unpadded", True, True)):
        tokenizer, model = load_encoder(base)
        model.train()
        opt, trainable = make_optimizer(model, cfg, fused=fused)
        variants[name] = dict(model=model, opt=opt, params=trainable, unpadded=unpadded, times=[], cpu=[],
                              tokens=[], losses=[], valid=[])
    load0 = os.getloadavg()
    for i, batch in enumerate(batches):
        order = list(variants) if i % 2 == 0 else list(variants)[::-1]
        for name in order:
            v = variants[name]
            torch.manual_seed(1000 + i)   # the same dropout masks for both variants
            t, c = time.perf_counter(), time.process_time()
            loss, n_tok = batch_loss(v["model"], tokenizer, texts, batch, cfg, spec["pooling"], device,
                                     unpadded=v["unpadded"])
            v["opt"].zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(v["params"], cfg.max_grad_norm)
            v["opt"].step()
            dt, dc = time.perf_counter() - t, time.process_time() - c
            v["losses"].append(float(loss.detach()))
            if i >= args.warmup:
                v["times"].append(dt)
                v["cpu"].append(dc)
                v["tokens"].append(n_tok)
        print(f"step {i + 1} ({'warm-up' if i < args.warmup else 'timed'}, {batch.batch_type}): "
              + ", ".join(f"{k} {v['losses'][-1]:.6f} loss {(v['times'] or [math.nan])[-1]:.2f} s"
                          for k, v in variants.items()), file=sys.stderr)
    valid = list(iter_batches(validation_table(pairs, batch_size=tp["batch_size"], n_batches=cfg.valid_batches,
                                               langs=params["data"]["train_langs"])))
    valid_losses = {}
    prefix = FrozenPrefix(cfg.freeze_layers) if cfg.freeze_layers else None   # what `hybridir train` uses
    for r in range(args.valid_reps):
        for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            v = variants[name]
            t = time.perf_counter()
            valid_losses[name] = validation_loss(v["model"], tokenizer, texts, valid, cfg, spec["pooling"], device,
                                                 unpadded=v["unpadded"],
                                                 prefix=prefix if v["unpadded"] else None)["valid_loss"]
            v["valid"].append(time.perf_counter() - t)
    load1 = os.getloadavg()

    print(f"device cpu, torch threads {torch.get_num_threads()}, encoder {base}, batch {tp['batch_size']}, "
          f"query/passage max length {cfg.query_max_length}/{cfg.passage_max_length}, precision {cfg.precision}, "
          f"freeze_embeddings {cfg.freeze_embeddings}, freeze_layers {cfg.freeze_layers}, "
          f"{args.steps} timed steps (+{args.warmup} warm-up), "
          f"{len(valid)} validation batches x {args.valid_reps}")
    print(f"load average (1, 5, 15 min) before {load0}, after {load1}")
    ref = statistics.median(variants["padded"]["times"])
    print("| variant | s/step (median) | steps/s | tokens/s | vs padded | CPU s/step | validation pass s (first / later) "
          "| valid loss |")
    print("|---|---|---|---|---|---|---|---|")
    for name, v in variants.items():
        s_step = statistics.median(v["times"])
        print(f"| {name} | {s_step:.2f} | {1 / s_step:.3f} | {sum(v['tokens']) / sum(v['times']):.0f} | "
              f"{ref / s_step:.2f}x | {statistics.median(v['cpu']):.2f} | {v['valid'][0]:.2f} / "
              f"{statistics.median(v['valid'][1:] or v['valid']):.2f} | "
              f"{valid_losses[name]:.6f} |")
    diff = max(abs(a - b) for a, b in zip(variants["padded"]["losses"], variants["unpadded"]["losses"]))
    print(f"max |loss difference| over the {n} steps: {diff:.2e}; validation loss difference "
          f"{abs(valid_losses['padded'] - valid_losses['unpadded']):.2e}")
    print(f"peak RSS (both variants in one process) {peak_memory_mb(device):.0f} MiB")
    fast = variants["unpadded"]
    s_step, first_s = statistics.median(fast["times"]), fast["valid"][0]
    valid_s = statistics.median(fast["valid"][1:] or fast["valid"])
    steps = int(tp["steps"])
    n_valid = 1 + steps // cfg.valid_every + (1 if steps % cfg.valid_every else 0)
    total_s = steps * s_step + first_s + (n_valid - 1) * valid_s
    fits = int(max(0.0, args.budget_min * 60 - first_s) / (s_step + valid_s / cfg.valid_every))
    print(f"projected `hybridir train` (fast step) with train.steps = {steps}, valid_every = {cfg.valid_every}: "
          f"{total_s / 60:.1f} min; steps that fit {args.budget_min:g} min: ~{fits}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
