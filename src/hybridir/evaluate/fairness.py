"""Language-fairness metrics of the multilingual setting, beside rank distance (metrics.py).

Setting: a query against the pooled candidates of every language; the question's answer sentence
in each language that has the question is relevant (one relevant candidate per language).

PEER@k, Probability of Equal Expected Rank (Yang, Jänich, Mayfield & Lawrie, "Language Fairness in
Multilingual Information Retrieval", SIGIR 2024 short, arXiv:2405.00978; the authors' code is the
PyPI package `peer-measure`). Per query q and relevance level r, the documents of level r form one
sample per language holding their ranks; the Kruskal-Wallis test of H0 "all languages have equal
expected rank" gives the p-value p_r, and

    PEER(q) = sum_r w_r * p_r,   sum_r w_r = 1;   higher = fairer (1: no evidence of unequal ranks).

At cutoff k only the top k are ranked: a relevant document below k is unretrieved, and the
unretrieved relevant documents of a level tie after every retrieved one (their midrank);
non-relevant documents below k are left out. A level whose documents come from fewer than two
languages scores 1 (the reference's convention: ranking one language's documents only cannot be
unfair between languages). H is tie-corrected and p is chi-squared with (languages - 1) degrees of
freedom: scipy.stats.kruskal, which ranks the level's pooled sample. Two deliberate differences from
the reference code: it feeds raw list positions to the H formula instead of ranks within the level
(equal when the level fills the list), and its tie rank for unretrieved documents reduces to
(2n + u + 1) / 2 with n the level's sample count, which can fall above retrieved documents; here
they rank after all retrieved ones, as the paper describes.

Why the evaluation weights only the non-relevant level (`EVAL_WEIGHTS`): with one relevant
candidate per language, every language's level-1 sample holds a single rank, so the between-group
and total sums of squares are equal and H = n - 1 whatever the ranking (n = languages with the
question): p_1 is a constant and says nothing. The non-relevant level asks whether, among the top
k, the non-relevant candidates of each language sit at the same expected rank: a system that lifts
the query's own language (or English) as such scores low. Caveat (the paper's definition): a top k
drawn from one language alone scores 1, so read PEER beside rank distance.

Cross-language rank agreement (`rank_agreement`, our definition): for query language X, let
R[q, Y] be the rank, in q's pooled ranking, of question q's relevant candidate in language Y. For
every pair of languages Y < Z, Spearman's rho of R[., Y] and R[., Z] over the queries of X that have
both (at least `MIN_QUERIES`; scipy.stats.spearmanr); the value for X is the mean over the pairs
with a defined rho. 1 = each question's answers are equally easy or hard to find in every
language (retrieval follows content, not language); it ignores a constant offset between
languages, which rank distance measures. Macro average over X, like every multilingual metric.

Only the grouping of ranks by language is hand-written; the rank statistics are scipy's.
"""
from __future__ import annotations

import itertools
import math
import warnings
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

EVAL_WEIGHTS: dict[int, float] = {0: 1.0}   # relevance level -> weight (see the module docstring)
MIN_QUERIES = 3                            # fewest shared queries for a Spearman rho of a language pair
RANK_PREFIX = "rank_in_"                   # per_query columns: rank of the relevant candidate of a language


def kruskal_p(samples: Sequence[np.ndarray]) -> float:
    """Kruskal-Wallis p-value over the non-empty samples (inf = tied after every finite value);
    1.0 with fewer than two samples or when every value ties (no evidence of a difference)."""
    groups = [np.asarray(s, dtype=np.float64) for s in samples if len(s)]
    if len(groups) < 2:
        return 1.0
    pooled = np.concatenate(groups)
    if (pooled == pooled[0]).all():
        return 1.0
    return float(stats.kruskal(*groups).pvalue)


def peer(ranks: np.ndarray, langs: np.ndarray, grades: np.ndarray, weights: Mapping[int, float],
         k: int | None = None) -> float:
    """PEER@k of one query: `ranks` (1-based positions in the ranking, NaN = not ranked), `langs` and
    relevance `grades` of its documents; `weights` per grade sum to 1; k None = no cutoff."""
    if not math.isclose(sum(weights.values()), 1.0):
        raise ValueError(f"PEER weights must sum to 1, got {dict(weights)}")
    ranks = np.asarray(ranks, dtype=np.float64)
    langs, grades = np.asarray(langs), np.asarray(grades)
    if k is not None:
        ranks = np.where(ranks <= k, ranks, np.nan)
    found = np.isfinite(ranks)
    value = 0.0
    for grade, weight in weights.items():
        if not weight:
            continue
        # unretrieved relevant documents count (tied last); unretrieved non-relevant ones do not
        level = (grades == grade) & (found if grade <= 0 else True)
        level_ranks = np.where(found[level], ranks[level], np.inf)
        level_langs = langs[level]
        value += weight * kruskal_p([level_ranks[level_langs == x] for x in np.unique(level_langs)])
    return value


def multi_peer(top_langs: np.ndarray, top_relevant: np.ndarray, rel_ranks: np.ndarray,
               rel_langs: np.ndarray, k: int, weights: Mapping[int, float] = EVAL_WEIGHTS) -> np.ndarray:
    """PEER@k per query of the multilingual setting.

    top_langs, top_relevant: (queries, >= k) language and relevance of the ranked list's first
    entries; rel_ranks, rel_langs: (queries, width) full-ranking rank and language of each relevant
    candidate (NaN / padding where absent)."""
    k = min(k, top_langs.shape[1])
    positions = np.arange(1, k + 1, dtype=np.float64)
    out = np.empty(len(top_langs), dtype=np.float64)
    for i in range(len(top_langs)):
        other = ~top_relevant[i, :k]
        has = np.isfinite(rel_ranks[i])
        ranks = np.concatenate([positions[other], rel_ranks[i][has]])
        langs = np.concatenate([top_langs[i, :k][other], rel_langs[i][has]])
        grades = np.concatenate([np.zeros(other.sum(), dtype=np.int64), np.ones(has.sum(), dtype=np.int64)])
        out[i] = peer(ranks, langs, grades, weights, k)
    return out


def rank_agreement(lang_ranks: pd.DataFrame, min_queries: int = MIN_QUERIES) -> float:
    """Mean Spearman rho over language pairs; rows = queries of one query language, columns =
    candidate languages, values = rank of the relevant candidate (NaN: the question lacks it)."""
    rhos = []
    for y, z in itertools.combinations(lang_ranks.columns, 2):
        both = lang_ranks[[y, z]].dropna()
        if len(both) < min_queries:
            continue
        with warnings.catch_warnings():   # a constant column has no rho: left out
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            rho = stats.spearmanr(both[y], both[z]).statistic
        if np.isfinite(rho):
            rhos.append(float(rho))
    return float(np.mean(rhos)) if rhos else math.nan


def rank_agreement_by_lang(multi: pd.DataFrame, langs: list[str]) -> pd.Series:
    """rank_agreement per query language from the multilingual rows of per_query (RANK_PREFIX columns)."""
    columns = [c for c in multi.columns if c.startswith(RANK_PREFIX)]
    values = {x: rank_agreement(multi.loc[multi["qlang"] == x, columns]) for x in langs}
    return pd.Series(values, dtype=np.float64).rename_axis("qlang")
