"""Training speed on this machine for a params file: steps/s, tokens/s, and what a run costs.

    .venv/bin/python scripts/bench_train.py                       # params.yaml, its encoder and pairs
    .venv/bin/python scripts/bench_train.py --steps 5 --precision fp32 --threads 2

Runs the real training step (hybridir.train.batch_loss + AdamW + clipping) on real batches built
from the pairs table (hybrid strategy, seed 0): `--warmup` untimed steps, then `--steps` timed
ones, then one validation pass (train.valid_batches forward-only batches). Prints the per-step
times and a projection of a full `hybridir train` run (train.steps steps + the validations),
and the number of steps that fits a time budget (--budget-min, default 15).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from hybridir.batches import build_batches, read_pairs  # noqa: E402
from hybridir.config import load_params  # noqa: E402
from hybridir.encoder_dir import load_encoder, read_settings  # noqa: E402
from hybridir.train import (Texts, TrainConfig, batch_loss, iter_batches, make_optimizer,  # noqa: E402
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
    base = Path(args.base or Path("models/base") / params["encoder"]["name"])
    spec = read_settings(base)
    pairs = read_pairs(args.pairs)
    n = args.warmup + args.steps
    table = build_batches(pairs, strategy="hybrid", alpha=float(tp["alpha"]), batch_size=tp["batch_size"],
                          steps=n, seed=0, langs=params["data"]["train_langs"], log=lambda m: None)
    batches = list(iter_batches(table))
    torch.manual_seed(0)
    tokenizer, model = load_encoder(base)
    model.train()
    opt, trainable = make_optimizer(model, cfg)
    texts = Texts(pairs, spec)
    device = torch.device("cpu")

    times, cpu_times, tokens = [], [], []
    for i, batch in enumerate(batches):
        t, c = time.perf_counter(), time.process_time()
        loss, n_tok = batch_loss(model, tokenizer, texts, batch, cfg, spec["pooling"], device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
        opt.step()
        dt, dc = time.perf_counter() - t, time.process_time() - c
        kind = "warm-up" if i < args.warmup else "timed"
        print(f"step {i + 1} ({kind}, {batch.batch_type}): {dt:.2f} s wall, {dc:.2f} s CPU, {n_tok} tokens, "
              f"loss {float(loss.detach()):.3f}", file=sys.stderr)
        if i >= args.warmup:
            times.append(dt)
            cpu_times.append(dc)
            tokens.append(n_tok)
    valid = list(iter_batches(validation_table(pairs, batch_size=tp["batch_size"], n_batches=cfg.valid_batches,
                                               langs=params["data"]["train_langs"])))
    t = time.perf_counter()
    validation_loss(model, tokenizer, texts, valid, cfg, spec["pooling"], device)
    valid_s = time.perf_counter() - t

    s_step = statistics.median(times)
    steps = int(tp["steps"])
    n_valid = 1 + steps // cfg.valid_every + (1 if steps % cfg.valid_every else 0)
    total_s = steps * s_step + n_valid * valid_s
    fits = int(max(0.0, args.budget_min * 60 - valid_s) / (s_step + valid_s / cfg.valid_every))
    print(f"device cpu, torch threads {torch.get_num_threads()}, encoder {base}, batch {tp['batch_size']}, "
          f"precision {cfg.precision}, freeze_embeddings {cfg.freeze_embeddings}, "
          f"trainable params {sum(p.numel() for p in trainable) / 1e6:.1f} M")
    print(f"median {s_step:.2f} s/step = {1 / s_step:.3f} steps/s; "
          f"{sum(tokens) / sum(times):.0f} tokens/s (non-padding, queries + passages); "
          f"CPU time {statistics.median(cpu_times):.2f} s/step (with --threads 1 and a busy machine, "
          "CPU time approximates the wall time on one dedicated core)")
    try:
        print(f"load average (1, 5, 15 min): {os.getloadavg()}")
    except OSError:
        pass
    print(f"validation pass ({len(valid)} batches): {valid_s:.1f} s; peak RSS {peak_memory_mb(device):.0f} MiB")
    print(f"projected `hybridir train` with train.steps = {steps}, valid_every = {cfg.valid_every}: "
          f"{total_s / 60:.1f} min; steps that fit {args.budget_min:g} min: ~{fits}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
