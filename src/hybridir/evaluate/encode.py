"""Encode stage: embed an evaluation set's queries and candidates with one encoder.

Output directory (written atomically):
  queries.npy      float32 (n_queries, dim), L2-normalised, row i = queries.parquet row i
  queries.parquet  lang, qid
  candidates.npy   float32 (n_candidates, dim), L2-normalised, row i = candidates.parquet row i
  candidates.parquet lang, cid
  meta.json        model, prefixes, pooling, max_length, precision, sizes, timings

Plain .npy arrays (read with allow_pickle=False) and parquet id tables: no pickle anywhere.
A text that occurs several times (a sentence repeated in a language) is encoded once, so its copies
get identical vectors, whatever batch each copy would have landed in.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..atomic import atomic_path
from ..errors import BadInput, CannotRun, MissingInput

QUERY_ID_COLUMNS = ("lang", "qid")
CANDIDATE_ID_COLUMNS = ("lang", "cid")


@dataclass
class Embeddings:
    query_ids: pd.DataFrame        # lang, qid
    queries: np.ndarray            # float32 (n_queries, dim)
    candidate_ids: pd.DataFrame    # lang, cid
    candidates: np.ndarray         # float32 (n_candidates, dim)
    meta: dict[str, Any]


def read_table(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise MissingInput(f"{path} is missing; run `hybridir eval-data` first")
    table = pd.read_parquet(path)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise BadInput(f"{path} lacks columns {missing} (has {list(table.columns)}); rebuild it "
                       "with `hybridir eval-data`")
    return table


def encode_unique(texts: list[str], encode: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """encode(texts) with every distinct text encoded once; rows in input order."""
    unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    vectors = np.asarray(encode([str(t) for t in unique]), dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(unique):
        raise RuntimeError(f"encoder returned shape {vectors.shape} for {len(unique)} texts")
    if not np.isfinite(vectors).all():
        raise CannotRun("encoder returned non-finite vectors (try evaluate.precision: fp32)")
    return vectors[inverse.reshape(-1)]


def write_embeddings(emb: Embeddings, out_dir: str | Path) -> None:
    """Write `emb` to a new directory `out_dir` (atomically replaced)."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for name, ids, vectors in (("queries", emb.query_ids, emb.queries),
                                   ("candidates", emb.candidate_ids, emb.candidates)):
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(vectors, dtype=np.float32),
                    allow_pickle=False)
            ids.reset_index(drop=True).to_parquet(tmp / f"{name}.parquet", index=False)
        (tmp / "meta.json").write_text(json.dumps(emb.meta, indent=2) + "\n", encoding="utf-8")


def read_embeddings(emb_dir: str | Path) -> Embeddings:
    """Read an encode-stage directory, checking that vectors and id tables line up."""
    emb_dir = Path(emb_dir)
    parts = {}
    for name, cols in (("queries", QUERY_ID_COLUMNS), ("candidates", CANDIDATE_ID_COLUMNS)):
        npy = emb_dir / f"{name}.npy"
        if not npy.is_file():
            raise MissingInput(f"{npy} is missing; run `hybridir encode --out {emb_dir}`")
        vectors = np.load(npy, allow_pickle=False)
        ids = read_table(emb_dir / f"{name}.parquet", cols)
        if vectors.ndim != 2 or vectors.dtype != np.float32 or len(vectors) != len(ids):
            raise BadInput(f"{npy}: expected float32 (n, dim) with n = {len(ids)} rows of "
                           f"{name}.parquet, got {vectors.dtype} {vectors.shape}; re-run encode")
        parts[name] = (ids[list(cols)].astype(str), vectors)
    meta_path = emb_dir / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    return Embeddings(parts["queries"][0], parts["queries"][1],
                      parts["candidates"][0], parts["candidates"][1], meta)


def encode_dataset(model_dir: str | Path, eval_dir: str | Path, params: dict[str, Any],
                   progress: bool = True) -> Embeddings:
    """Embed queries.parquet (query prefix) and candidates.parquet (passage prefix) of `eval_dir`."""
    import torch  # heavy imports only where the model runs

    from ..model.encoder_dir import load_encoder, read_settings
    from ..model.modeling import converted_cache, encode_placement, encode_texts

    eval_dir = Path(eval_dir)
    queries = read_table(eval_dir / "queries.parquet", QUERY_ID_COLUMNS + ("text",))
    candidates = read_table(eval_dir / "candidates.parquet", CANDIDATE_ID_COLUMNS + ("text",))
    settings = read_settings(model_dir)   # prefixes and pooling are the model's, not params
    ev = params["evaluate"]
    tokenizer, model = load_encoder(model_dir)
    precision, device = encode_placement(ev["precision"])
    model = model.to(device).eval()
    cache = converted_cache(model_dir, precision, device)   # shared with this model's other encodes

    def encoder(prefix: str) -> Callable[[list[str]], np.ndarray]:
        return lambda texts: encode_texts(
            model, tokenizer, texts, prefix=prefix, pooling=settings["pooling"],
            max_length=params["encoder"]["max_length"], batch_size=ev["batch_size"],
            precision=precision, progress=progress, cache=cache,
            split=int(params["train"]["freeze_layers"]))   # layers shared with the base (modeling.lower_states)

    timings = {}
    t0 = time.perf_counter()
    q_vectors = encode_unique(queries["text"].tolist(), encoder(settings["query_prefix"]))
    timings["queries_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    c_vectors = encode_unique(candidates["text"].tolist(), encoder(settings["passage_prefix"]))
    timings["candidates_s"] = round(time.perf_counter() - t0, 2)
    meta = {
        "model": str(model_dir), "eval_data": str(eval_dir), **settings,
        "max_length": params["encoder"]["max_length"], "precision": precision,
        "batch_size": ev["batch_size"], "dim": int(q_vectors.shape[1]),
        "n_queries": len(queries), "n_candidates": len(candidates),
        "device": device, "torch_threads": torch.get_num_threads(), **timings,
    }
    return Embeddings(queries[list(QUERY_ID_COLUMNS)].astype(str).reset_index(drop=True), q_vectors,
                      candidates[list(CANDIDATE_ID_COLUMNS)].astype(str).reset_index(drop=True),
                      c_vectors, meta)


def _run(args: argparse.Namespace) -> int:
    params = args.params
    if not Path(args.model).is_dir():
        raise MissingInput(f"model directory {args.model} not found; run `hybridir import-encoder` "
                           "(or train) first")
    emb = encode_dataset(args.model, args.eval_data, params, progress=not args.quiet)
    write_embeddings(emb, args.out)
    m = emb.meta
    print(f"encoded {m['n_queries']} queries in {m['queries_s']}s and {m['n_candidates']} candidates "
          f"in {m['candidates_s']}s ({m['precision']} on {m['device']}, {m['torch_threads']} threads) "
          f"-> {args.out}",
          file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help="embed an evaluation set's queries and candidates")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--model", required=True, help="encoder directory (models/base/<name> or a trained one)")
    p.add_argument("--eval-data", required=True, help="evaluation tables directory (data/eval/<dataset>)")
    p.add_argument("--out", required=True, help="output directory (results/<model>/<dataset>/embeddings)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
