"""Retrieval metrics from the ranks of relevant candidates, and their LAReQA-style aggregates.

Per query, everything is computed from `ranks`: the 1-based positions of the query's relevant
candidates in the ranking (NaN = padding, or a relevant candidate that was not retrieved) and
`n_relevant`, the number of relevant candidates (the denominator; it counts unretrieved ones too).
With full rankings, as `hybridir evaluate` uses, every relevant candidate is retrieved.

Definitions (trec_eval's, so that ir_measures / pytrec_eval agree to 1e-6 on the same ranking):
- AP = (1 / n_relevant) * sum over retrieved relevant d of precision@rank(d); a relevant candidate
  that is never retrieved adds 0 to the sum but still counts in the denominator.
- R@k = (number of relevant in the top k) / n_relevant (trec_eval `recall_k`; with one relevant
  candidate, as in the mono- and cross-lingual settings, this is the hit rate at k).
- nDCG@k with binary gains: sum over relevant at rank r <= k of 1 / log2(r + 1), divided by the
  ideal DCG of min(n_relevant, k) relevant at the top (trec_eval `ndcg_cut_k`).
- Rank distance (Huang et al. 2023, language bias): in the multilingual setting, the highest minus
  the lowest rank among the query's relevant candidates (one per language that has the question).
  A query with a single relevant candidate has distance 0. Lower is better.

Aggregates (the paper's Table 1 / Table 2):
- a cell (query language X, corpus language Y) is the mean over the queries of X that have a
  relevant candidate in Y (MLQA-R questions exist in 2-4 languages only); a cell with no such query
  is NaN and left out of every average;
- Mo. = mean of the diagonal cells, Cr. = mean of the defined off-diagonal cells,
  Mul. = macro average over X of the per-language means against the pooled corpus;
- rank distance = mean over the queries of X (multilingual setting), then macro over X;
- language fairness (fairness.py), when per_query has its columns: peer = PEER@k (k = the run
  depth evaluate.top_k), mean over the queries of X, then macro over X; rank_corr = the cross-language
  rank agreement of X's queries, macro over X. Both higher = fairer.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .fairness import RANK_PREFIX, rank_agreement_by_lang

METRIC_COLUMNS = ("ap", "r1", "r10", "ndcg10")
FAIRNESS_COLUMNS = ("peer",)   # per-query language-fairness metrics of the multilingual setting
MULTI = "all"  # corpus-language label of the pooled multilingual corpus


def _check(ranks: np.ndarray, n_relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.ndim == 1:
        ranks = ranks[:, None]
    n_relevant = np.asarray(n_relevant, dtype=np.float64).reshape(-1)
    if ranks.ndim != 2 or len(ranks) != len(n_relevant):
        raise ValueError(f"ranks {ranks.shape} and n_relevant {n_relevant.shape} disagree")
    found = np.isfinite(ranks).sum(axis=1)
    if (n_relevant < 1).any() or (found > n_relevant).any():
        raise ValueError("n_relevant must be >= 1 and >= the number of retrieved relevant per query")
    if (ranks[np.isfinite(ranks)] < 1).any():
        raise ValueError("ranks are 1-based")
    return ranks, n_relevant


def average_precision(ranks: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """trec_eval AP per query: sum_i i / r_(i) over the sorted retrieved relevant ranks, / n_relevant."""
    ranks, n_relevant = _check(ranks, n_relevant)
    ordered = np.sort(ranks, axis=1)  # NaN sorts last, so position i holds the i-th relevant found
    hits = np.arange(1, ordered.shape[1] + 1, dtype=np.float64)[None, :]
    precision = np.where(np.isfinite(ordered), hits / ordered, 0.0)
    return precision.sum(axis=1) / n_relevant


def recall_at(ranks: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Share of the relevant candidates ranked in the top k."""
    ranks, n_relevant = _check(ranks, n_relevant)
    return (np.nan_to_num(ranks, nan=np.inf) <= k).sum(axis=1) / n_relevant


def ndcg_at(ranks: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """nDCG@k with binary relevance and log2(rank + 1) discounts."""
    ranks, n_relevant = _check(ranks, n_relevant)
    r = np.nan_to_num(ranks, nan=np.inf)
    gains = np.where(r <= k, 1.0 / np.log2(np.minimum(r, k) + 1.0), 0.0)
    ideal_cum = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64)))])
    ideal = ideal_cum[np.minimum(n_relevant, k).astype(np.int64)]
    return gains.sum(axis=1) / ideal


def rank_distance(ranks: np.ndarray) -> np.ndarray:
    """Highest minus lowest retrieved relevant rank per query; 0 with fewer than two."""
    r = np.asarray(ranks, dtype=np.float64)
    if r.ndim == 1:
        r = r[:, None]
    found = np.isfinite(r)
    hi = np.where(found, r, -np.inf).max(axis=1)
    lo = np.where(found, r, np.inf).min(axis=1)
    return np.where(found.sum(axis=1) >= 2, hi - lo, 0.0)


def query_metrics(ranks: np.ndarray, n_relevant: np.ndarray) -> dict[str, np.ndarray]:
    """All per-query metrics: ap, r1, r10, ndcg10, rank_distance, best_rank."""
    r = np.asarray(ranks, dtype=np.float64)
    r = r[:, None] if r.ndim == 1 else r
    best = np.where(np.isfinite(r).any(axis=1), np.nanmin(np.where(np.isfinite(r), r, np.inf), axis=1),
                    np.nan)
    return {"ap": average_precision(r, n_relevant), "r1": recall_at(r, n_relevant, 1),
            "r10": recall_at(r, n_relevant, 10), "ndcg10": ndcg_at(r, n_relevant, 10),
            "rank_distance": rank_distance(r), "best_rank": best}


# ---------------------------------------------------------------- aggregates over a per-query table
# per_query columns: setting (mono|cross|multi), qlang, clang (MULTI for multi), qid, ap, r1, r10,
# ndcg10, rank_distance, ...


def cell_matrix(per_query: pd.DataFrame, metric: str, langs: list[str]) -> pd.DataFrame:
    """Mean `metric` per (query language, corpus language) over the mono and cross settings;
    rows = query language, columns = corpus language, NaN where a cell has no query."""
    cells = per_query[per_query["setting"].isin(("mono", "cross"))]
    table = cells.groupby(["qlang", "clang"])[metric].mean().unstack("clang")
    return table.reindex(index=langs, columns=langs).rename_axis(index="qlang", columns="clang")


def cell_counts(per_query: pd.DataFrame, langs: list[str]) -> pd.DataFrame:
    cells = per_query[per_query["setting"].isin(("mono", "cross"))]
    table = cells.groupby(["qlang", "clang"]).size().unstack("clang")
    return (table.reindex(index=langs, columns=langs).fillna(0).astype(int)
            .rename_axis(index="qlang", columns="clang"))


def diagonal_mean(matrix: pd.DataFrame) -> float:
    """Mo.: mean of the defined diagonal cells."""
    values = np.diag(matrix.to_numpy(dtype=np.float64))
    return _nanmean(values)


def off_diagonal_mean(matrix: pd.DataFrame) -> float:
    """Cr.: mean of the defined off-diagonal cells."""
    values = matrix.to_numpy(dtype=np.float64)
    return _nanmean(values[~np.eye(len(values), dtype=bool)])


def multi_by_lang(per_query: pd.DataFrame, langs: list[str]) -> pd.DataFrame:
    """Per query language: mean of every metric against the pooled corpus, and the query count;
    with the fairness columns (fairness.py), the mean PEER and the rank agreement too."""
    multi = per_query[per_query["setting"] == "multi"]
    cols = list(METRIC_COLUMNS) + ["rank_distance"] + [c for c in FAIRNESS_COLUMNS if c in multi.columns]
    table = multi.groupby("qlang")[cols].mean()
    if any(c.startswith(RANK_PREFIX) for c in multi.columns):
        table["rank_corr"] = rank_agreement_by_lang(multi, langs)
    table["n_queries"] = multi.groupby("qlang").size()
    table = table.reindex(langs)
    table["n_queries"] = table["n_queries"].fillna(0).astype(int)
    return table.rename_axis(index="qlang")


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else math.nan


def _json_number(x: Any) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def summarise(per_query: pd.DataFrame, langs: list[str]) -> dict[str, Any]:
    """The metrics.json body: macro averages of every metric per setting, plus per language.

    mo / cr / mul are mAP; r1_mono, r10_multi, ndcg10_cross, ... follow `<metric>_<setting>`.
    NaN (an undefined average) is written as null.
    """
    out: dict[str, Any] = {}
    multi = multi_by_lang(per_query, langs)
    for metric in METRIC_COLUMNS:
        matrix = cell_matrix(per_query, metric, langs)
        name = "map" if metric == "ap" else metric
        values = {"mono": diagonal_mean(matrix), "cross": off_diagonal_mean(matrix),
                  "multi": _nanmean(multi[metric].to_numpy())}
        if metric == "ap":
            out.update(mo=values["mono"], cr=values["cross"], mul=values["multi"])
        else:
            out.update({f"{name}_{setting}": v for setting, v in values.items()})
    out["rank_distance"] = _nanmean(multi["rank_distance"].to_numpy())
    fairness = [c for c in ("peer", "rank_corr") if c in multi.columns]
    out.update({c: _nanmean(multi[c].to_numpy()) for c in fairness})
    out = {k: _json_number(v) for k, v in out.items()}

    ap = cell_matrix(per_query, "ap", langs)
    r1 = cell_matrix(per_query, "r1", langs)
    counts = cell_counts(per_query, langs)
    per_lang: dict[str, Any] = {}
    for x in langs:
        others = [y for y in langs if y != x]
        per_lang[x] = {
            "mo": _json_number(ap.loc[x, x]),
            "cr": _json_number(_nanmean(ap.loc[x, others].to_numpy())),   # X as the query language
            "cr_as_corpus": _json_number(_nanmean(ap.loc[others, x].to_numpy())),
            "mul": _json_number(multi.loc[x, "ap"]),
            "rank_distance": _json_number(multi.loc[x, "rank_distance"]),
            "r1_mono": _json_number(r1.loc[x, x]),
            "r1_cross": _json_number(_nanmean(r1.loc[x, others].to_numpy())),
            "r10_multi": _json_number(multi.loc[x, "r10"]),
            "n_queries_multi": int(multi.loc[x, "n_queries"]),
            **{c: _json_number(multi.loc[x, c]) for c in fairness},
        }
    defined = counts.to_numpy() > 0
    out["n_cells"] = {"mono": int(np.diag(defined).sum()),
                      "cross": int(defined[~np.eye(len(langs), dtype=bool)].sum())}
    out["n_queries_multi"] = int(multi["n_queries"].sum())
    out["per_lang"] = per_lang
    return out
