"""Evaluate stage: LAReQA-style mono-, cross- and multilingual retrieval metrics from embeddings.

Settings (see metrics.py for the metric definitions):
- cell X->Y (mono when X = Y, cross otherwise): the queries of language X that have a relevant
  candidate in Y, searched against the candidates of Y only;
- multi: every query against all candidates of all languages; the question's answer sentence in
  every language is relevant.

Output directory (written atomically, together with the metrics file):
  map_mono_cross.csv, r1_mono_cross.csv, ndcg10_mono_cross.csv
                          matrices, rows = query language, columns = corpus language (diagonal = mono)
  cell_queries.csv        number of queries per cell (0 = undefined cell, NaN in the matrices)
  map_multi.csv           per query language: ap (= mAP), r1, r10, ndcg10, rank_distance, n_queries
  per_query.parquet       setting, qlang, clang ("all" for multi), qid, n_rel, best_rank, ap, r1, r10,
                          ndcg10, and for multi only (NaN elsewhere): rank_distance, peer (PEER@top_k),
                          rank_in_<lang> (rank of the relevant candidate of each language; fairness.py)
  runs/mono_cross.trec.gz TREC run, top evaluate.top_k_cells per query; query id "<X>-><Y>/<qid>"
  runs/multi.trec.gz      TREC run against the pooled corpus, top evaluate.top_k; query id "<X>/<qid>"
  qrels/mono_cross.qrels.gz, qrels/multi.qrels.gz   the matching TREC qrels
  plots/*.png             heatmaps of the matrices, per-language bars for multi mAP and rank distance
  info.json               sizes and timings
Run files are ranked like the metrics (score desc, then candidate id desc, trec_eval's order) with
scores printed to 9 significant digits (exact for float32), so trec_eval on a run file as deep as
the pool reproduces per_query.parquet. Metrics never read the (truncated) run files: they use the
full rankings. The cell runs are shallow by default because there are many cell queries (XQuAD-R:
121 cells x 1,190 = 144k queries, i.e. 14M lines and 160 MB gzipped at depth 100).
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
import pandas as pd

from ..atomic import atomic_outputs
from ..data.evaldata import EvalTables
from ..errors import BadInput
from . import fairness as F
from . import metrics as M
from .encode import Embeddings, read_embeddings, read_table
from .search import Pool, SearchResult, make_pool, normalise, search

RUN_TAG = "hybridir"


def load_eval_tables(eval_dir: str | Path) -> EvalTables:
    eval_dir = Path(eval_dir)
    tables = EvalTables(
        read_table(eval_dir / "queries.parquet", ("lang", "qid"))[["lang", "qid"]].astype(str),
        read_table(eval_dir / "candidates.parquet", ("lang", "cid"))[["lang", "cid"]].astype(str),
        read_table(eval_dir / "qrels.parquet", ("qid", "lang", "cid"))[["qid", "lang", "cid"]].astype(str))
    check_tables(tables, eval_dir)
    return tables


def check_tables(t: EvalTables, where: Path | str = "evaluation tables") -> None:
    """Unique query and candidate ids; every qrels row names a candidate of its own language."""
    dup_q = t.queries.duplicated()
    if dup_q.any():
        raise BadInput(f"{where}/queries.parquet: duplicate (lang, qid) "
                       f"{t.queries[dup_q].iloc[0].tolist()}")
    dup_c = t.candidates["cid"].duplicated()
    if dup_c.any():
        raise BadInput(f"{where}/candidates.parquet: duplicate cid {t.candidates['cid'][dup_c].iloc[0]!r}")
    lang_of = t.candidates.set_index("cid")["lang"]
    known = t.qrels["cid"].isin(lang_of.index)
    if not known.all():
        raise BadInput(f"{where}/qrels.parquet: cid {t.qrels['cid'][~known].iloc[0]!r} is not in "
                       "candidates.parquet; rebuild with `hybridir eval-data`")
    wrong = lang_of.loc[t.qrels["cid"]].to_numpy() != t.qrels["lang"].to_numpy()
    if wrong.any():
        raise BadInput(f"{where}/qrels.parquet: row {t.qrels[wrong].iloc[0].tolist()} names a "
                       "candidate of another language; rebuild with `hybridir eval-data`")


def _rows_of(ids: pd.DataFrame, wanted: pd.DataFrame, keys: list[str], what: str) -> np.ndarray:
    """Row numbers in `ids` of each row of `wanted` (matched on `keys`); the two must hold the same set."""
    if len(ids) != len(wanted) or ids.duplicated(keys).any():
        raise BadInput(f"the {what} embeddings ({len(ids)} rows) do not match the evaluation tables "
                       f"({len(wanted)} rows); re-run `hybridir encode` on these tables")
    index = pd.MultiIndex.from_frame(ids[keys]) if len(keys) > 1 else pd.Index(ids[keys[0]])
    target = pd.MultiIndex.from_frame(wanted[keys]) if len(keys) > 1 else pd.Index(wanted[keys[0]])
    rows = index.get_indexer(target)
    if (rows < 0).any():
        raise BadInput(f"{what} {wanted[keys][rows < 0].iloc[0].tolist()} has no embedding; re-run "
                       "`hybridir encode` on these evaluation tables")
    return rows


def relevant_columns(query_qids: np.ndarray, qrels: pd.DataFrame,
                     pool: Pool) -> tuple[np.ndarray, np.ndarray]:
    """(rel_columns padded with -1, n_relevant) for each query: qrels rows of its qid inside `pool`."""
    rel = qrels.drop_duplicates(["qid", "cid"])
    rel = rel.assign(col=pool.columns(rel["cid"].to_numpy()))
    queries = pd.DataFrame({"row": np.arange(len(query_qids)), "qid": query_qids})
    pairs = queries.merge(rel[["qid", "col"]], on="qid")
    n_rel = np.bincount(pairs["row"].to_numpy(), minlength=len(query_qids))
    width = max(1, int(n_rel.max()) if len(n_rel) else 1)
    cols = np.full((len(query_qids), width), -1, dtype=np.int64)
    pairs = pairs.sort_values(["row", "col"], kind="stable")
    slot = pairs.groupby("row").cumcount().to_numpy()
    cols[pairs["row"].to_numpy(), slot] = pairs["col"].to_numpy()
    return cols, n_rel


def write_run(stream: BinaryIO, labels: np.ndarray, pool: Pool, top_columns: np.ndarray,
              top_scores: np.ndarray) -> None:
    """TREC run lines `qid Q0 docid rank score tag` for one block of queries."""
    k = top_columns.shape[1]
    cids = pool.cids[top_columns]
    buf = io.StringIO()
    for label, row_cids, row_scores in zip(labels, cids, top_scores.tolist()):
        buf.write("".join(f"{label} Q0 {c} {r} {s:.9g} {RUN_TAG}\n"
                          for c, r, s in zip(row_cids.tolist(), range(1, k + 1), row_scores)))
    stream.write(buf.getvalue().encode("utf-8"))


def write_qrels(stream: BinaryIO, labels: np.ndarray, pool: Pool, rel_columns: np.ndarray) -> None:
    lines = [f"{label} 0 {pool.cids[c]} 1\n"
             for label, cols in zip(labels, rel_columns) for c in cols if c >= 0]
    stream.write("".join(lines).encode("utf-8"))


def _gzip(stack: ExitStack, path: Path) -> gzip.GzipFile:
    """A gzip stream closed (trailer written, then the file) when `stack` exits. mtime=0 and no file
    name in the header: identical content gives identical bytes."""
    raw = stack.enter_context(open(path, "wb"))
    return stack.enter_context(gzip.GzipFile(filename="", mode="wb", compresslevel=1, fileobj=raw, mtime=0))


def pool_langs(pool: Pool, candidates: pd.DataFrame) -> np.ndarray:
    """The language of each pool column."""
    return candidates.set_index("cid")["lang"].loc[pool.cids].to_numpy().astype(str)


def fairness_columns(result: SearchResult, rel_cols: np.ndarray, column_lang: np.ndarray,
                     langs: list[str], k: int) -> dict[str, np.ndarray]:
    """Per multilingual query: PEER@k (fairness.py) and the rank of its relevant candidate in each
    language (rank_in_<lang>, NaN where the question lacks that language)."""
    has = rel_cols >= 0
    rel_langs = np.where(has, column_lang[np.maximum(rel_cols, 0)], "")
    top_rel = (result.top_columns[:, :, None] == np.where(has, rel_cols, -1)[:, None, :]).any(axis=2)
    out = {"peer": F.multi_peer(column_lang[result.top_columns], top_rel, result.ranks, rel_langs, k)}
    for lang in langs:
        in_lang = has & (rel_langs == lang)   # at most one relevant candidate per language
        rank = np.where(in_lang, result.ranks, -np.inf).max(axis=1)
        out[f"{F.RANK_PREFIX}{lang}"] = np.where(in_lang.any(axis=1), rank, np.nan)
    return out


def evaluate(tables: EvalTables, emb: Embeddings, *, top_k: int = 100, top_k_cells: int = 10,
             out_dir: Path | None = None, log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Per-query metrics for every cell and the multilingual setting; writes runs + qrels when
    `out_dir` is given. Returns the per-query table."""
    q_rows = _rows_of(emb.query_ids, tables.queries, ["lang", "qid"], "query")
    c_rows = _rows_of(emb.candidate_ids, tables.candidates, ["cid"], "candidate")
    q_vectors = normalise(emb.queries[q_rows])
    c_vectors = normalise(emb.candidates[c_rows])
    q_lang = tables.queries["lang"].to_numpy()
    q_qid = tables.queries["qid"].to_numpy()
    c_lang = tables.candidates["lang"].to_numpy()
    langs = sorted(set(c_lang))

    frames = []
    with ExitStack() as stack:
        streams = {}
        if out_dir is not None:
            for sub in ("runs", "qrels"):
                (out_dir / sub).mkdir(parents=True, exist_ok=True)
            for name in ("mono_cross", "multi"):
                streams[name] = (_gzip(stack, out_dir / "runs" / f"{name}.trec.gz"),
                                 _gzip(stack, out_dir / "qrels" / f"{name}.qrels.gz"))
        jobs = [(y, "mono_cross") for y in langs] + [(M.MULTI, "multi")]
        for clang, run_name in jobs:
            t0 = time.perf_counter()
            in_pool = c_lang == clang if clang != M.MULTI else np.ones(len(c_lang), dtype=bool)
            pool = make_pool(tables.candidates["cid"].to_numpy()[in_pool], c_vectors[in_pool])
            qrels = tables.qrels if clang == M.MULTI else tables.qrels[tables.qrels["lang"] == clang]
            rel_cols, n_rel = relevant_columns(q_qid, qrels, pool)
            keep = np.flatnonzero(n_rel > 0)  # e.g. an MLQA-R question that does not exist in Y
            rel_cols, n_rel = rel_cols[keep], n_rel[keep]
            result = search(q_vectors[keep], pool, rel_cols, top_k if clang == M.MULTI else top_k_cells)
            scores = M.query_metrics(result.ranks, n_rel)
            qlangs = q_lang[keep]
            if clang == M.MULTI:
                setting = np.full(len(keep), "multi", dtype=object)
                labels = np.char.add(np.char.add(qlangs.astype(str), "/"), q_qid[keep].astype(str))
                scores.update(fairness_columns(result, rel_cols, pool_langs(pool, tables.candidates), langs,
                                               top_k))
            else:
                setting = np.where(qlangs == clang, "mono", "cross").astype(object)
                scores["rank_distance"] = np.full(len(keep), np.nan)
                labels = np.char.add(np.char.add(qlangs.astype(str), f"->{clang}/"), q_qid[keep].astype(str))
            frames.append(pd.DataFrame({"setting": setting, "qlang": qlangs, "clang": clang,
                                        "qid": q_qid[keep], "n_rel": n_rel, **scores}))
            if streams:
                run, qrel = streams[run_name]
                write_run(run, labels, pool, result.top_columns, result.top_scores)
                write_qrels(qrel, labels, pool, rel_cols)
            if log:
                log(f"  corpus {clang}: {len(keep)} queries x {len(pool)} candidates "
                    f"in {time.perf_counter() - t0:.1f}s")
    per_query = pd.concat(frames, ignore_index=True)
    per_query["best_rank"] = per_query["best_rank"].astype("int64")
    return per_query


def write_reports(per_query: pd.DataFrame, langs: list[str], out_dir: Path, title: str) -> dict[str, Any]:
    """Matrices (CSV), per-query parquet and figures; returns the metrics.json body."""
    from . import plots

    summary = M.summarise(per_query, langs)
    per_query.to_parquet(out_dir / "per_query.parquet", index=False)
    matrices = {name: M.cell_matrix(per_query, metric, langs)
                for name, metric in (("map", "ap"), ("r1", "r1"), ("ndcg10", "ndcg10"))}
    for name, matrix in matrices.items():
        matrix.to_csv(out_dir / f"{name}_mono_cross.csv")
    M.cell_counts(per_query, langs).to_csv(out_dir / "cell_queries.csv")
    multi = M.multi_by_lang(per_query, langs)
    multi.to_csv(out_dir / "map_multi.csv")

    def num(key: str) -> str:
        return "n/a" if summary[key] is None else f"{summary[key]:.3f}"

    plot_dir = out_dir / "plots"
    plots.heatmap(matrices["map"], f"{title} mAP (Mo {num('mo')} / Cr {num('cr')})",
                  plot_dir / "map_mono_cross.png")
    plots.heatmap(matrices["r1"], f"{title} R@1 (mono {num('r1_mono')} / cross {num('r1_cross')})",
                  plot_dir / "r1_mono_cross.png")
    plots.bar_chart(multi["ap"], f"{title} multilingual mAP (Mul {num('mul')})", "mAP",
                    plot_dir / "map_multi.png")
    rd = "n/a" if summary["rank_distance"] is None else f"{summary['rank_distance']:.1f}"
    plots.bar_chart(multi["rank_distance"], f"{title} rank distance (mean {rd}; lower is better)",
                    "rank distance", plot_dir / "rank_distance.png", fmt="{:.0f}")
    return summary


def run_evaluation(emb_dir: str | Path, eval_dir: str | Path, out_dir: str | Path,
                   metrics_path: str | Path, *, top_k: int = 100, top_k_cells: int = 10,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The whole stage: read, search, score, write `out_dir` and `metrics_path` together (atomically)."""
    t_start = time.perf_counter()
    tables = load_eval_tables(eval_dir)
    emb = read_embeddings(emb_dir)
    langs = sorted(set(tables.candidates["lang"]))
    title = Path(eval_dir).name
    with atomic_outputs(out_dir, metrics_path) as (tmp_out, tmp_metrics):
        tmp_out.mkdir()
        t0 = time.perf_counter()
        per_query = evaluate(tables, emb, top_k=top_k, top_k_cells=top_k_cells, out_dir=tmp_out, log=log)
        t_search = time.perf_counter() - t0
        summary = write_reports(per_query, langs, tmp_out, title)
        summary["peer_k"] = min(top_k, len(tables.candidates))   # PEER's cutoff: the multilingual run depth
        tmp_metrics.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        info = {"dataset": title, "embeddings": str(emb_dir), "eval_data": str(eval_dir), "languages": langs,
                "n_queries": len(tables.queries), "n_candidates": len(tables.candidates),
                "top_k": top_k, "top_k_cells": top_k_cells,
                "encoder": emb.meta, "search_and_metrics_s": round(t_search, 2),
                "total_s": round(time.perf_counter() - t_start, 2)}
        (tmp_out / "info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return summary


def _run(args: argparse.Namespace) -> int:
    params = args.params
    t0 = time.perf_counter()
    log = (lambda msg: print(msg, file=sys.stderr))
    ev = params["evaluate"]
    body = run_evaluation(args.embeddings, args.eval_data, args.out, args.metrics,
                          top_k=ev["top_k"], top_k_cells=ev["top_k_cells"], log=log)
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"{Path(args.eval_data).name}: mAP Mo {fmt(body['mo'])} Cr {fmt(body['cr'])} "
          f"Mul {fmt(body['mul'])}, "
          f"rank distance {fmt(body['rank_distance'])}, PEER@{body['peer_k']} {fmt(body.get('peer'))}, "
          f"rank agreement {fmt(body.get('rank_corr'))} ({time.perf_counter() - t0:.1f}s) -> {args.out}, "
          f"{args.metrics}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="search and score one evaluation set from its embeddings")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--embeddings", required=True, help="encode-stage output directory")
    p.add_argument("--eval-data", required=True, help="evaluation tables directory (data/eval/<dataset>)")
    p.add_argument("--out", required=True, help="output directory (results/<model>/<dataset>/eval)")
    p.add_argument("--metrics", required=True, help="metrics JSON file (DVC metrics)")
    p.set_defaults(func=_run)
