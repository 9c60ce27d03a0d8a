"""Probe stage: layer-wise cross-lingual alignment of one encoder on held-out parallel sentences.

The probe of arXiv 2506.15415: per layer, the mean cosine between mean-pooled hidden states of
parallel sentences, against random (non-parallel) pairs. Cross-lingual alignment typically peaks
in the lower-middle layers; training on parallel data should raise the gap in the top layers.

Units: the held-out NTREX sentences of the training pairs table (data/train/pairs.parquet rows with
split == "valid" and source == "ntrex"; a unit's translations share group_id, its sentence is the
`query` column), units present in every language of that table, at most `MAX_UNITS` of them
(sorted by group_id). Each sentence gets the encoder directory's passage prefix, truncated at
`MAX_LENGTH` tokens, fp32, batched by length. For layer l (0 = the embedding output, then each
transformer layer), h_l(s) is the attention-masked mean of the hidden states of sentence s and

    parallel(l) = mean over units u and language pairs A < B of cos(h_l(u_A), h_l(u_B))
    random(l)   = the same with u_B replaced by pi(u)_B, pi a fixed random derangement of the units
    gap(l)      = parallel(l) - random(l)

Output (--out, a DVC metrics file): layers, parallel, random, gap, n_units, langs, n_sentences.
Cost (e5-small, 96 units x 9 languages = 864 sentences, fp32): 28 s on one CPU thread of the 2-core
development machine, model loading included; about 1.7 GB peak memory.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..atomic import atomic_path
from ..errors import BadInput, MissingInput
from ..model.encoder_dir import load_encoder, pool, read_settings
from ..model.modeling import length_buckets, pad_batch

MAX_UNITS = 200     # held-out NTREX units (x languages = sentences encoded)
MAX_LENGTH = 128    # tokens; NTREX sentences are news sentences, nearly all shorter
BATCH_SIZE = 32
SEED = 0            # the derangement of the random pairs


def parallel_units(pairs: pd.DataFrame, max_units: int = MAX_UNITS) -> pd.DataFrame:
    """Rows = units (group_id), columns = languages, values = the sentence: held-out NTREX units
    present in every language of the held-out rows."""
    valid = pairs[(pairs["split"] == "valid") & (pairs["source"] == "ntrex")]
    if valid.empty:
        raise BadInput("the pairs table has no held-out NTREX rows (split == 'valid', source == 'ntrex'): "
                       "add ntrex to data.train_sources or raise data.valid_fraction")
    table = valid.drop_duplicates(["group_id", "lang"]).pivot(index="group_id", columns="lang", values="query")
    table = table.dropna().sort_index()
    if len(table) < 2 or table.shape[1] < 2:
        raise BadInput(f"the probe needs >= 2 held-out NTREX units in >= 2 languages, got {table.shape}")
    return table.iloc[:max_units]


def layer_embeddings(model: torch.nn.Module, tokenizer: Any, texts: list[str], *, prefix: str,
                     max_length: int = MAX_LENGTH, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """float32 [layers + 1, len(texts), hidden]: L2-normalised mean-pooled states of every layer."""
    ids = tokenizer([prefix + t for t in texts], truncation=True, max_length=max_length)["input_ids"]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: np.ndarray | None = None
    with torch.inference_mode():
        for idx in length_buckets(lengths, batch_size):
            input_ids, mask = pad_batch([ids[i] for i in idx], pad_id)
            mask_t = torch.from_numpy(mask)
            states = model(input_ids=torch.from_numpy(input_ids), attention_mask=mask_t,
                           output_hidden_states=True).hidden_states
            pooled = torch.stack([pool(h.float(), mask_t, "mean") for h in states])
            pooled = torch.nn.functional.normalize(pooled, dim=-1).numpy()
            if out is None:
                out = np.zeros((pooled.shape[0], len(texts), pooled.shape[2]), dtype=np.float32)
            out[:, idx] = pooled
    assert out is not None
    return out


def derangement(n: int, seed: int = SEED) -> np.ndarray:
    """A random permutation of range(n) with no fixed point (a shuffled cycle)."""
    order = np.random.default_rng(seed).permutation(n)
    perm = np.empty(n, dtype=np.int64)
    perm[order] = np.roll(order, -1)
    return perm


def alignment_by_layer(vectors: np.ndarray, seed: int = SEED) -> dict[str, list[float]]:
    """vectors [layers, units, languages, hidden], unit-normalised -> parallel, random, gap per layer."""
    n_layers, n_units, n_langs, _ = vectors.shape
    shuffled = vectors[:, derangement(n_units, seed)]
    parallel, random = [], []
    for a in range(n_langs):
        for b in range(a + 1, n_langs):
            parallel.append(np.einsum("lud,lud->lu", vectors[:, :, a], vectors[:, :, b]).mean(axis=1))
            random.append(np.einsum("lud,lud->lu", vectors[:, :, a], shuffled[:, :, b]).mean(axis=1))
    par, rnd = np.mean(parallel, axis=0), np.mean(random, axis=0)
    return {"parallel": par.tolist(), "random": rnd.tolist(), "gap": (par - rnd).tolist()}


def run_probe(model_dir: str | Path, pairs_path: str | Path, out: str | Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    pairs_path = Path(pairs_path)
    if not pairs_path.is_file():
        raise MissingInput(f"{pairs_path} not found; run `hybridir train-data` first")
    units = parallel_units(pd.read_parquet(pairs_path, columns=["source", "group_id", "lang", "query", "split"]))
    tokenizer, model = load_encoder(model_dir)
    prefix = read_settings(model_dir)["passage_prefix"]
    texts = units.to_numpy().reshape(-1).tolist()          # unit-major, languages inside
    emb = layer_embeddings(model.float(), tokenizer, texts, prefix=prefix)
    vectors = emb.reshape(emb.shape[0], len(units), units.shape[1], emb.shape[-1])
    curves = {k: [round(x, 6) for x in v] for k, v in alignment_by_layer(vectors).items()}
    # No timings or paths in the file: the same model and pairs give the same bytes (the wall time is logged).
    body = {"layers": list(range(emb.shape[0])), **curves, "n_units": len(units), "langs": list(units.columns),
            "n_sentences": len(texts)}
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    return {**body, "seconds": round(time.perf_counter() - t0, 1)}


def _run(args: argparse.Namespace) -> int:
    body = run_probe(args.model, args.pairs, args.out)
    peak = int(np.argmax(body["gap"]))
    print(f"probe {args.model}: {body['n_units']} units x {len(body['langs'])} languages, gap parallel - random "
          f"peaks at layer {peak} ({body['gap'][peak]:.3f}), last layer {body['gap'][-1]:.3f} "
          f"({body['seconds']}s) -> {args.out}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="layer-wise cross-lingual alignment on held-out parallel sentences")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--model", required=True, help="encoder directory")
    p.add_argument("--pairs", required=True, help="training pairs table (data/train/pairs.parquet)")
    p.add_argument("--out", required=True, help="output JSON (results/<encoder>/<model>/probe.json)")
    p.set_defaults(func=_run)
