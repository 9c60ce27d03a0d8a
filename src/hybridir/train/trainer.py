"""Train stage: contrastive fine-tuning of the dual encoder on a fixed batch table.

Loss (InfoNCE with in-batch negatives, the math of sentence-transformers'
MultipleNegativesRankingLoss): for the batch's queries q_i and candidates d_j = its positives
(then the optional extra negatives), all L2-normalised,
    loss = mean_i -log( exp(s cos(q_i, d_i+)) / sum_j exp(s cos(q_i, d_j)) ),  s = train.scale.
Optional, each off at 0: + train.distill_weight x the distance to the frozen base model's embeddings
of the same texts (objectives.py; the training loss only: the validation loss that selects checkpoints
stays the plain InfoNCE, comparable across settings); train.freeze_layers fixes the embeddings and
the lowest layers (freeze.py).
The loop consumes exactly the batch table's batches, in batch_id order (`iter_batches`), one
optimizer step each: AdamW (no weight decay on biases and LayerNorm weights, as is standard),
linear warm-up over w = ceil(warmup_ratio * steps) steps (step i at lr * (i+1)/(w+1), so the first
step already moves) then linear decay towards 0, gradient clipping, bf16 autocast when
train.precision = bf16 (the loss itself in fp32; on CPUs without native bf16 that is ~2.5x slower
than fp32, so the CPU default is fp32). Tokenisation pads to the longest text of each batch.

Checkpoint selection: the validation loss is computed on fixed batches built from the
split == "valid" rows with the same construction as training batches: half X-X-mono, half X-Y
(so selection does not favour one strategy), a fixed seed shared by every run, so every
strategy and seed is selected on the same batches. It is computed at step 0 (the base model),
every train.valid_every steps and after the last step; the checkpoint with the lowest loss
(earliest on ties) is the output. The base model is a candidate: if no step improves on it,
the output is the base model unchanged, and train_summary.json says so (returned_base_model).

Outputs in --out (atomic): the model as an encoder directory (`encoder_dir.save_encoder`: safetensors,
tokenizer, the base's prefixes and pooling as sentence-transformers config), loss.csv, loss.png,
train_summary.json.

Several processes (train.processes > 1): `hybridir train` re-runs itself under torchrun
(`python -m torch.distributed.run --standalone --nproc-per-node N -m hybridir.cli train ...`, the
same command line), so the stage command stays the same for Snakemake and DVC; OMP_NUM_THREADS is
passed on (torchrun sets 1 when it is unset). Backend gloo on CPU, nccl on CUDA. Every rank embeds
its contiguous shard of each batch's triplets (batch_size must divide by the number of processes),
the candidate embeddings are gathered with a differentiable all_gather so each query still sees the
whole batch as negatives, and DistributedDataParallel averages the gradients: the gradient of the
full-batch loss. Validation runs on rank 0 alone and its numbers are broadcast, so the checkpoint
decision is made once; rank 0 writes every file. The GPU/NCCL path is NOT TESTED (no GPU on the
development machine); tests/test_train_distributed.py checks 2 gloo processes against one.

The best checkpoint is kept in memory as its trainable weights (with frozen layers a small part of
the model: the frozen rest is the base model's, an input) and the output is written once, at the end.

Resume: every train.checkpoint_every steps (0 = never) rank 0 writes the training state to
`<out>.resume/state.pt` (atomically): the trainable weights now and at the best step, AdamW and
scheduler state, step, best step and loss, the loss log, every rank's RNG state; all loadable with
torch.load(weights_only=True). A run whose inputs match the state's
fingerprint (batch table, base model, training settings, seed, number of processes) resumes
from it and ends with the same weights as an uninterrupted run; the state is removed once the
output is written.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..atomic import atomic_path
from ..data.batches import build_batches, pairs_fingerprint, read_batches, read_pairs
from ..errors import BadInput, CannotRun, MissingInput
from ..model.unpadded import FrozenPrefix, pooled as unpadded_pooled, supports as unpadded_supports
from .freeze import freeze
from .objectives import distill_loss, frozen_teacher

VALID_SEED = 20240820          # fixed: every run is selected on the same validation batches


# ---------------------------------------------------------------- settings and inputs


@dataclass(frozen=True)
class TrainConfig:
    lr: float
    weight_decay: float
    warmup_ratio: float
    scale: float
    max_grad_norm: float
    query_max_length: int
    passage_max_length: int
    valid_every: int
    valid_batches: int
    precision: str
    freeze_embeddings: bool
    distill_weight: float = 0.0    # objectives.py; 0 = off
    freeze_layers: int = 0         # freeze.py; 0 = off

    @classmethod
    def from_params(cls, train: dict[str, Any]) -> "TrainConfig":
        return cls(**{k: train[k] for k in cls.__dataclass_fields__ if k in train})


@dataclass(frozen=True)
class Batch:
    batch_id: int
    batch_type: str
    query_rows: np.ndarray
    passage_rows: np.ndarray
    negative_rows: np.ndarray | None


def iter_batches(table: pd.DataFrame) -> Iterator[Batch]:
    """The table's batches in batch_id order (0, 1, ...), triplets in table order."""
    ids = table["batch_id"].to_numpy()
    if len(ids) == 0:
        raise BadInput("the batch table is empty")
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    if not np.array_equal(ids[starts], np.arange(len(starts))):
        raise BadInput("batch table rows must be grouped by batch_id = 0, 1, 2, ... in order")
    ends = np.r_[starts[1:], len(ids)]
    neg = table["negative_row"].to_numpy(np.int64) if "negative_row" in table.columns else None
    q = table["query_row"].to_numpy(np.int64)
    p = table["passage_row"].to_numpy(np.int64)
    kinds = table["batch_type"].to_numpy()
    for b, (s, e) in enumerate(zip(starts, ends)):
        yield Batch(b, str(kinds[s]), q[s:e], p[s:e], None if neg is None else neg[s:e])


def validation_table(pairs: pd.DataFrame, *, batch_size: int, n_batches: int, langs: list[str] | None,
                     log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Fixed validation batches from split == 'valid': half X-X-mono, half X-Y (fixed seed)."""
    n_xx = n_batches // 2
    parts, errors = [], []
    for kind, n, seed in (("xx_mono", n_xx, VALID_SEED), ("xy", n_batches - n_xx, VALID_SEED + 1)):
        try:
            parts.append(build_batches(pairs, strategy=kind, alpha=0.5, batch_size=batch_size, steps=n,
                                       seed=seed, split="valid", langs=langs, log=lambda m: None))
        except ValueError as exc:
            errors.append(f"{kind}: {exc}")
    if not parts:
        raise BadInput("cannot build validation batches from split == 'valid': " + "; ".join(errors)
                       + " (raise data.valid_fraction or lower train.batch_size)")
    if errors and log:
        log("train: validation uses one batch type only: " + "; ".join(errors))
    if len(parts) == 1:   # one type impossible (e.g. only single-language sources): all of the other
        kind = parts[0]["batch_type"].iloc[0]
        parts = [build_batches(pairs, strategy=kind, alpha=0.5, batch_size=batch_size, steps=n_batches,
                               seed=VALID_SEED, split="valid", langs=langs, log=lambda m: None)]
    else:
        parts[1] = parts[1].assign(batch_id=parts[1]["batch_id"] + n_xx)
    return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------- several processes (see docstring)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return t
        import torch.distributed.nn.functional as dist_fn
        return torch.cat(dist_fn.all_gather(t), dim=0)   # differentiable

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64,
                         device=torch.device("cuda") if torch.cuda.is_available() else None)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world

    def share(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def collect(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def data_parallel(model: torch.nn.Module, device: torch.device, dist: Dist) -> torch.nn.Module:
    """`model` under DistributedDataParallel (gradients averaged over the ranks) when there are several."""
    if dist.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # Every trainable parameter is in the loss (the unused pooler is frozen in make_optimizer).
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def launch(processes: int, argv: list[str]) -> int:
    """Re-run this `hybridir` command line as `processes` torchrun workers on this machine."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
           "-m", "hybridir.cli", *argv]
    print(f"train: {processes} processes: {shlex.join(cmd)}", file=sys.stderr)
    return subprocess.run(cmd, check=False).returncode


def cpu_has_native_bf16() -> bool:
    """avx512_bf16 or AMX: without them CPU bf16 autocast is emulated and several times slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True   # unknown (not Linux): do not warn
    return "avx512_bf16" in flags or "amx_bf16" in flags


def setup_device() -> tuple[torch.device, Dist]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu"), Dist()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    return device, Dist(torch.distributed.get_rank(), world)


# ---------------------------------------------------------------- the loss


def info_nce(queries: torch.Tensor, candidates: torch.Tensor, scale: float,
             labels: torch.Tensor | None = None) -> torch.Tensor:
    """Mean InfoNCE; queries [n, d], candidates [m, d] (L2-normalised); positive of i = candidate labels[i]."""
    logits = scale * queries @ candidates.T
    if labels is None:
        labels = torch.arange(len(queries), device=queries.device)
    return F.cross_entropy(logits, labels)


class Texts:
    """Prefixed query / passage texts of the pairs table, indexed by row_id."""

    def __init__(self, pairs: pd.DataFrame, spec: dict[str, str]):
        self.queries = np.asarray([spec["query_prefix"] + t for t in pairs["query"].tolist()], dtype=object)
        self.passages = np.asarray([spec["passage_prefix"] + t for t in pairs["passage"].tolist()], dtype=object)


def use_unpadded(model: torch.nn.Module, device: torch.device) -> bool:
    """The forward without computation on padding (unpadded.py) is used on the CPU, for a plain
    (not DDP-wrapped) supported encoder; on CUDA and under DDP the padded forward stays."""
    return device.type == "cpu" and unpadded_supports(model)


def tokenize(tokenizer: Any, texts: list[str], max_length: int, device: torch.device) -> dict[str, torch.Tensor]:
    """One padded, truncated batch of token ids on `device`."""
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items()}


def embed_tokens(model: torch.nn.Module, enc: dict[str, torch.Tensor], *, pooling: str, device: torch.device,
                 unpadded: bool | None = None, prefix: FrozenPrefix | None = None) -> tuple[torch.Tensor, int]:
    """L2-normalised embeddings, fp32 or wider (differentiable), and the number of non-padding tokens.

    unpadded: None = `use_unpadded` decides; True / False force the unpadded / padded forward
    (equal up to float rounding, the same dropout masks included: unpadded.py); prefix: the frozen
    lower layers' states to reuse in eval mode (unpadded forward only: unpadded.FrozenPrefix)."""
    from ..model.encoder_dir import pool  # lazily: `hybridir batches` and the CLI do not need torch

    if use_unpadded(model, device) if unpadded is None else unpadded:
        emb = unpadded_pooled(model, enc["input_ids"], enc["attention_mask"], pooling, prefix)
    else:
        emb = pool(model(**enc).last_hidden_state, enc["attention_mask"], pooling)
    # at least fp32 (bf16 under autocast); float64 stays float64 (tests compare float64 runs)
    return F.normalize(emb.to(torch.promote_types(emb.dtype, torch.float32)), dim=-1), \
        int(enc["attention_mask"].sum())


def embed(model: torch.nn.Module, tokenizer: Any, texts: list[str], *, max_length: int, pooling: str,
          device: torch.device, unpadded: bool | None = None,
          prefix: FrozenPrefix | None = None) -> tuple[torch.Tensor, int]:
    """`embed_tokens` of `texts` tokenized."""
    return embed_tokens(model, tokenize(tokenizer, texts, max_length, device), pooling=pooling, device=device,
                        unpadded=unpadded, prefix=prefix)


def batch_loss(model: torch.nn.Module, tokenizer: Any, texts: Texts, batch: Batch, cfg: TrainConfig,
               pooling: str, device: torch.device, dist: Dist = Dist(),
               teacher: torch.nn.Module | None = None, unpadded: bool | None = None,
               prefix: FrozenPrefix | None = None) -> tuple[torch.Tensor, int]:
    """This rank's loss on `batch` (its shard of the queries against the whole batch's candidates),
    plus cfg.distill_weight times the distillation term to `teacher` when one is given (objectives.py);
    unpadded, prefix: see `embed_tokens`."""
    n = len(batch.query_rows)
    if n % dist.world:
        raise BadInput(f"batch of {n} triplets does not split evenly over {dist.world} ranks")
    k = n // dist.world
    shard = slice(dist.rank * k, (dist.rank + 1) * k)
    amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    with amp:
        # tokenized once: the teacher below embeds the same token ids
        q_enc = tokenize(tokenizer, texts.queries[batch.query_rows[shard]], cfg.query_max_length, device)
        if batch.batch_type == "bitext":   # translation ranking: the candidate is a sentence (batches.py)
            p_enc = tokenize(tokenizer, texts.queries[batch.passage_rows[shard]], cfg.query_max_length, device)
        else:
            p_enc = tokenize(tokenizer, texts.passages[batch.passage_rows[shard]], cfg.passage_max_length, device)
        q, tq = embed_tokens(model, q_enc, pooling=pooling, device=device, unpadded=unpadded, prefix=prefix)
        p, tp = embed_tokens(model, p_enc, pooling=pooling, device=device, unpadded=unpadded, prefix=prefix)
        cands = [dist.gather(p)]
        tokens = tq + tp
        if batch.negative_rows is not None:
            neg, tn = embed(model, tokenizer, texts.passages[batch.negative_rows[shard]],
                            max_length=cfg.passage_max_length, pooling=pooling, device=device, unpadded=unpadded,
                            prefix=prefix)
            cands.append(dist.gather(neg))
            tokens += tn
        if teacher is not None:
            with torch.no_grad():
                target = [embed_tokens(teacher, enc, pooling=pooling, device=device)[0] for enc in (q_enc, p_enc)]
    labels = torch.arange(k, device=q.device) + dist.rank * k
    loss = info_nce(q, torch.cat(cands, dim=0), cfg.scale, labels)
    if teacher is not None:
        loss = loss + cfg.distill_weight * distill_loss([q, p], target)
    return loss, tokens


def validation_loss(model: torch.nn.Module, tokenizer: Any, texts: Texts, batches: list[Batch],
                    cfg: TrainConfig, pooling: str, device: torch.device,
                    unpadded: bool | None = None, prefix: FrozenPrefix | None = None) -> dict[str, float]:
    """Mean loss over the validation batches, overall and per batch type (dropout off, no autograd);
    prefix: keeps the frozen lower layers' states of these batches between calls (see embed_tokens)."""
    was_training = model.training
    model.eval()
    per: dict[str, list[float]] = {}
    for b in batches:
        with torch.inference_mode():
            loss, _ = batch_loss(model, tokenizer, texts, b, cfg, pooling, device, unpadded=unpadded, prefix=prefix)
        per.setdefault(b.batch_type, []).append(float(loss))
    model.train(was_training)
    out = {"valid_loss": float(np.mean([v for vs in per.values() for v in vs]))}
    out.update({f"valid_loss_{k}": float(np.mean(v)) for k, v in sorted(per.items())})
    return out


# ---------------------------------------------------------------- the loop


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig,
                   fused: bool | None = None) -> tuple[torch.optim.Optimizer, list]:
    """AdamW over the trainable parameters (weight decay on matrices only); also returns them.
    fused: None = fused on the CPU, torch's default elsewhere."""
    freeze(model, embeddings=cfg.freeze_embeddings, layers=cfg.freeze_layers)
    if getattr(model, "pooler", None) is not None:   # saved for a complete checkpoint; pooling never uses it
        model.pooler.requires_grad_(False)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    # fused on the CPU (one kernel over all parameters instead of a Python loop; the same update up to
    # float rounding); on CUDA torch's own default
    if fused is None:
        fused = True if all(p.device.type == "cpu" for p in decay + no_decay) else None
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, fused=fused)
    return opt, decay + no_decay


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1 over `warmup` steps, then linear decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the weights training changes (requires_grad); the frozen rest is the base model's."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Put `weights` (trainable_state of a model with the same frozen parts) into `model`."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != trainable:
        raise BadInput(f"training state holds weights {sorted(set(weights) ^ trainable)[:3]}... that do not match "
                       "this run's trainable ones (other freeze settings?); delete the .resume directory")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in weights:
                p.copy_(weights[name])


def rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict[str, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def train_loop(model: torch.nn.Module, tokenizer: Any, *, texts: Texts, batches: list[Batch],
               valid: list[Batch], cfg: TrainConfig, pooling: str, device: torch.device,
               save_best: Callable[[int], None], dist: Dist = Dist(), progress: bool = True,
               log: Callable[[str], None] | None = None, state: dict[str, Any] | None = None,
               checkpoint_every: int = 0,
               save_state: Callable[[dict[str, Any]], None] = lambda state: None,
               ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Train on `batches` in order; call save_best(step) (rank 0) whenever the validation loss improves.

    Continues from `state` (one that save_state was given) when there is one; passes save_state
    (rank 0) the state every `checkpoint_every` steps. Returns the per-step log (step, train_loss,
    lr, valid_loss, ...) and the summary numbers.
    """
    from tqdm.auto import tqdm

    log = log or (lambda m: None)
    steps = len(batches)
    warmup = math.ceil(cfg.warmup_ratio * steps)
    model.to(device)
    teacher = frozen_teacher(model) if cfg.distill_weight else None   # the base model, before any step
    model.train()
    opt, params = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, warmup))
    net = data_parallel(model, device, dist)
    # frozen lower layers: validation passes after the first run only the upper ones (bit-identical)
    prefix = FrozenPrefix(cfg.freeze_layers) if cfg.freeze_layers and use_unpadded(model, device) else None

    def check(step: int) -> dict[str, float]:
        v = dist.share(validation_loss(model, tokenizer, texts, valid, cfg, pooling, device, prefix=prefix)
                       if dist.main else None)
        if v["valid_loss"] < best["valid_loss"]:
            best.update(step=step, valid_loss=v["valid_loss"])
            if dist.main:
                save_best(step)
        return v

    t0 = time.perf_counter()
    if state is None:
        start, train_seconds, tokens = 0, 0.0, 0
        best: dict[str, Any] = {"step": -1, "valid_loss": math.inf}
        rows: list[dict[str, Any]] = [{"step": 0, "train_loss": math.nan, "lr": 0.0, "batch_type": "", **check(0)}]
    else:
        load_trainable(model, state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"][dist.rank], device)
        start, train_seconds, tokens = state["step"], state["train_seconds"], state["tokens"]
        best, rows = state["best"], state["rows"]
    bar = tqdm(total=steps, initial=start, desc="train", disable=not (progress and dist.main), file=sys.stderr)
    for i, batch in enumerate(batches[start:], start):
        t = time.perf_counter()
        lr = sched.get_last_lr()[0]
        loss, n_tok = batch_loss(net, tokenizer, texts, batch, cfg, pooling, device, dist, teacher)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        value = dist.mean(float(loss.detach()))
        if not math.isfinite(value):
            raise CannotRun(f"training loss is {value} at step {i + 1} (batch {batch.batch_id}); "
                            "lower train.lr or use train.precision: fp32")
        train_seconds += time.perf_counter() - t
        tokens += n_tok * dist.world
        step = i + 1
        row = {"step": step, "train_loss": value, "lr": lr, "batch_type": batch.batch_type}
        if step % cfg.valid_every == 0 or step == steps:
            row.update(check(step))
            log(f"train: step {step}: valid_loss {row['valid_loss']:.4f} (best {best['valid_loss']:.4f} "
                f"at step {best['step']})")
        rows.append(row)
        if checkpoint_every and step % checkpoint_every == 0 and step < steps:
            rng = dist.collect(rng_state(device))
            if dist.main:
                save_state({"step": step, "model": trainable_state(model), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "rng": rng, "best": best, "rows": rows,
                            "train_seconds": train_seconds, "tokens": tokens})
        bar.update(1)
        bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.2e}")
    bar.close()
    table = pd.DataFrame(rows)
    first = ["step", "train_loss", "lr", "valid_loss"]
    table = table[first + sorted(c for c in table.columns if c.startswith("valid_loss_")) + ["batch_type"]]
    summary = {
        "steps": steps, "best_step": best["step"], "best_valid_loss": best["valid_loss"],
        "base_valid_loss": float(table["valid_loss"].iloc[0]),
        "returned_base_model": best["step"] == 0,
        "seconds": time.perf_counter() - t0, "train_seconds": train_seconds,
        "steps_per_s": steps / train_seconds if train_seconds else math.nan,
        "tokens_per_s": tokens / train_seconds if train_seconds else math.nan,
        "peak_memory_mb": peak_memory_mb(device),
        "peak_memory_kind": "cuda max allocated" if device.type == "cuda" else "process max RSS",
        "tokens_counted": "non-padding query + passage (+ negative) tokens, all ranks",
    }
    return table, summary


def plot_losses(table: pd.DataFrame, best_step: int, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    tr = table[table["step"] > 0]
    ax.plot(tr["step"], tr["train_loss"], lw=0.6, alpha=0.5, label="train (per batch)")
    ax.plot(tr["step"], tr["train_loss"].rolling(10, min_periods=1).mean(), lw=1.5, label="train (10-step mean)")
    va = table.dropna(subset=["valid_loss"])
    ax.plot(va["step"], va["valid_loss"], "o-", label="validation")
    ax.axvline(best_step, color="grey", ls="--", lw=1, label=f"selected (step {best_step})")
    ax.set_xlabel("step")
    ax.set_ylabel("InfoNCE loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ---------------------------------------------------------------- the stage


def check_batches(table: pd.DataFrame, settings: dict[str, Any], pairs: pd.DataFrame, tp: dict[str, Any],
                  path: str) -> None:
    """The batch table must belong to these pairs and these params (else it is stale)."""
    if settings.get("pairs_fingerprint") != pairs_fingerprint(pairs):
        raise BadInput(f"{path} was built from a different pairs table; rebuild it with `hybridir batches`")
    for key, unset in (("batch_size", None), ("steps", None), ("extra_negatives", None), ("bitext_share", 0)):
        if settings.get(key, unset) != tp[key]:
            raise BadInput(f"{path} was built with {key} = {settings.get(key)} but train.{key} = {tp[key]}; "
                           "rebuild it with `hybridir batches`")
    rows = np.concatenate([table[c].to_numpy(np.int64) for c in ("query_row", "passage_row", "negative_row")
                           if c in table.columns])
    if rows.min() < 0 or rows.max() >= len(pairs):
        raise BadInput(f"{path} points at rows outside the pairs table")
    if not (pairs["split"].to_numpy()[rows] == "train").all():
        raise BadInput(f"{path} uses rows that are not split == 'train'")


def fingerprint(*parts: Any, files: list[Path]) -> str:
    """sha256 of `parts` (as JSON) and the bytes of `files` (directories: every file under them)."""
    h = hashlib.sha256(json.dumps(parts, sort_keys=True).encode())
    for f in files:
        for path in sorted(f.rglob("*")) if f.is_dir() else [f]:
            if path.is_file():
                h.update(path.relative_to(f).as_posix().encode())
                with path.open("rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
    return h.hexdigest()


def load_state(resume: Path, key: str, log: Callable[[str], None]) -> dict[str, Any] | None:
    """The training state in `resume` if it was written for the inputs `key` identifies."""
    if not (resume / "state.pt").is_file():
        return None
    state = torch.load(resume / "state.pt", map_location="cpu", weights_only=True)
    if state["fingerprint"] != key:
        log(f"train: ignoring {resume}: written for other inputs or settings")
        return None
    log(f"train: resuming from {resume} at step {state['step']}")
    return state


def run_training(*, params: dict[str, Any], base: str | Path, pairs_path: str | Path,
                 batches_path: str | Path, out: str | Path, seed: int | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """The whole stage; returns train_summary.json's content."""
    from ..model.encoder_dir import load_encoder, read_settings, save_encoder

    log = (lambda m: print(m, file=sys.stderr))
    t0 = time.perf_counter()
    tp = params["train"]
    cfg = TrainConfig.from_params(tp)
    if cfg.precision == "auto":   # bf16 autocast where the hardware has it natively (a CUDA GPU), else fp32
        cfg = replace(cfg, precision="bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32")
    spec = read_settings(base)
    pairs = read_pairs(pairs_path)
    table, settings = read_batches(batches_path)
    check_batches(table, settings, pairs, tp, str(batches_path))
    seed = int(settings["seed"]) if seed is None else seed
    device, dist = setup_device()
    torch.manual_seed(seed + dist.rank)
    if device.type == "cpu" and cfg.precision == "bf16" and not cpu_has_native_bf16():
        log("train: warning: this CPU has no native bf16 (avx512_bf16 / AMX); bf16 autocast is emulated and "
            "several times slower than fp32 here: consider train.precision: fp32")
    langs = params["data"].get("train_langs")
    valid_table = validation_table(pairs, batch_size=int(tp["batch_size"]), n_batches=cfg.valid_batches,
                                   langs=langs, log=log)
    tokenizer, model = load_encoder(base)
    texts = Texts(pairs, spec)
    batches = list(iter_batches(table))
    valid = list(iter_batches(valid_table))

    out = Path(out)
    resume = out.with_name(out.name + ".resume")   # beside the output: it survives a crash
    key = fingerprint(asdict(cfg), langs, seed, dist.world, files=[Path(batches_path), Path(base)])
    state = load_state(resume, key, log)
    best = state["best_weights"] if state is not None else {}   # trainable weights at the best step
    with (atomic_path(out) if dist.main else contextlib.nullcontext(None)) as tmp:
        def save_best(step: int) -> None:
            best.update(trainable_state(model))

        def save_state(state: dict[str, Any]) -> None:
            with atomic_path(resume) as stage:
                stage.mkdir()
                torch.save(state | {"best_weights": best, "fingerprint": key}, stage / "state.pt")

        log_table, summary = train_loop(model, tokenizer, texts=texts, batches=batches, valid=valid, cfg=cfg,
                                        pooling=spec["pooling"], device=device, save_best=save_best,
                                        dist=dist, progress=progress, log=log, state=state,
                                        checkpoint_every=int(tp["checkpoint_every"]), save_state=save_state)
        if summary["returned_base_model"]:
            log("train: no step improved the validation loss of the base model: the output IS the base model")
        summary.update({
            "seconds": time.perf_counter() - t0, "seed": seed, "strategy": settings.get("strategy"),
            "batch_size": int(tp["batch_size"]), "device": str(device), "world_size": dist.world,
            "torch_threads": torch.get_num_threads(), "valid_batches": len(valid),
            "valid_batch_types": valid_table.drop_duplicates("batch_id")["batch_type"].value_counts()
            .sort_index().to_dict(),
            "config": asdict(cfg),
        })
        if dist.main:
            load_trainable(model, best)
            save_encoder(model, tokenizer, tmp, spec)
            log_table.to_csv(tmp / "loss.csv", index=False)
            plot_losses(log_table, summary["best_step"], tmp / "loss.png")
            (tmp / "train_summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if dist.main:
        shutil.rmtree(resume, ignore_errors=True)
    dist.barrier()
    if dist.world > 1:
        torch.distributed.destroy_process_group()
    log(f"train: {out}: best step {summary['best_step']} (valid loss {summary['best_valid_loss']:.4f}, "
        f"base {summary['base_valid_loss']:.4f}); {summary['steps_per_s']:.3f} steps/s, "
        f"{summary['tokens_per_s']:.0f} tokens/s")
    return summary


def _run(args: argparse.Namespace) -> int:
    processes = int(args.params["train"]["processes"])
    if processes > 1 and "LOCAL_RANK" not in os.environ:   # not yet a torchrun worker
        return launch(processes, args.argv)
    run_training(params=args.params, base=args.base, pairs_path=args.pairs,
                 batches_path=args.batches, out=args.out, seed=args.seed, progress=not args.no_progress)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune the encoder on a batch table (InfoNCE, in-batch negatives)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--base", required=True, help="base encoder directory (from `hybridir import-encoder`)")
    p.add_argument("--pairs", default="data/train/pairs.parquet")
    p.add_argument("--batches", required=True, help="batch table from `hybridir batches`")
    p.add_argument("--recipe", default=None,
                   help="use experiments.recipes.<RECIPE>'s train settings in place of train's (recipe study)")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--seed", type=int, default=None, help="torch seed (default: the batch table's seed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
