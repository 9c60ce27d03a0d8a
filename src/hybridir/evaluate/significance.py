"""Paired randomization (sign-flip permutation) tests between two retrieval systems on Mo./Cr./Mul.

The statistic is the difference of the headline metric itself, computed exactly as metrics.py
computes it from per-query average precision (AP):
- Mo.  = mean over the monolingual cells (X -> X) of the cell's mean AP,
- Cr.  = mean over the defined cross-lingual cells (X -> Y, X != Y) of the cell's mean AP,
- Mul. = mean over query languages X of the mean AP against the pooled corpus.
Each is a weighted sum of per-query AP, w_i = 1 / (n_groups * n_queries_in_group(i)), so the observed
difference is sum_i w_i d_i with d_i = AP_A(i) - AP_B(i) on the same query, and a permutation that
swaps the two systems' results on a set of queries flips the sign of their d_i.

Exchangeable unit (what a permutation flips as one): by default the *question* (qid), i.e. all of
its translations and all the cells it appears in flip together. The evaluation sets are samples of
questions; the 11 translations of an XQuAD-R question and its 121 cells are correlated measurements
of that one question, so flipping them independently would understate the variance of the statistic
under the null and give p-values that are too small. `unit="query"` (one query language's version of
a question, flipped consistently across its cells) and `unit="cell"` (every query-in-cell alone) are
available for comparison; they are only valid if those measurements are independent.

p-value: (1 + #{|T_perm| >= |T_obs|}) / (1 + n_permutations) (two-sided; the +1 counts the observed
assignment, so p is never 0 and identical systems give p = 1). Permutations are drawn with a seeded
numpy Generator, blockwise and vectorised (10,000 permutations of 1,190 XQuAD-R questions take well
under a second; `unit="cell"` with 131k cross-lingual queries a few seconds).

Seed-averaged systems: pass a list of per-query tables (one per training seed); AP is averaged per
query over the seeds first, so the statistic is the difference of the seed-mean headline metrics.

Multiple comparisons: `holm` gives Holm-Bonferroni adjusted p-values for a family of tests.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

KEYS = ("setting", "qlang", "clang", "qid")
# headline metric -> (setting, columns that define its macro-averaging groups)
HEADLINE = {"mo": ("mono", ("qlang", "clang")), "cr": ("cross", ("qlang", "clang")),
            "mul": ("multi", ("qlang",))}
UNITS = {"question": ("qid",), "query": ("qlang", "qid"), "cell": KEYS}
DEFAULT_PERMUTATIONS = 10_000
_BLOCK_ELEMENTS = 1 << 22  # permutations x units per block (32 MiB of float64)


@dataclass(frozen=True)
class PairedTest:
    metric: str          # mo | cr | mul
    score_a: float       # headline metric of system A
    score_b: float
    diff: float          # score_a - score_b
    p_value: float
    n_units: int         # exchangeable units flipped (questions by default)
    n_queries: int       # per-query rows behind the metric
    n_permutations: int
    unit: str


Tables = pd.DataFrame | pd.Series | Sequence[pd.DataFrame]


def per_query_ap(tables: Tables, value: str = "ap") -> pd.Series:
    """Per-query `value` indexed by KEYS; a list of tables (seeds of one system) is averaged per query.

    Every table must hold the same queries (same evaluation data); otherwise ValueError. A Series
    (this function's own output) is passed through, so a seed average can be computed once and
    reused across tests.
    """
    if isinstance(tables, pd.Series):
        if list(tables.index.names) != list(KEYS):
            raise ValueError(f"a per-query Series must be indexed by {KEYS}, got {tables.index.names}")
        return tables.sort_index()
    frames = [tables] if isinstance(tables, pd.DataFrame) else list(tables)
    if not frames:
        raise ValueError("no per-query table given")
    series = []
    for i, t in enumerate(frames):
        missing = [c for c in (*KEYS, value) if c not in t.columns]
        if missing:
            raise ValueError(f"per-query table {i} lacks columns {missing} (has {list(t.columns)}); "
                             "it must come from `hybridir evaluate` (eval/per_query.parquet)")
        s = t.set_index(list(KEYS))[value].astype(np.float64)
        if s.index.duplicated().any():
            raise ValueError(f"per-query table {i} has duplicate rows {s.index[s.index.duplicated()][0]}")
        if not np.isfinite(s.to_numpy()).all():
            raise ValueError(f"per-query table {i} has non-finite {value!r} values")
        series.append(s.sort_index())
    first = series[0]
    for i, s in enumerate(series[1:], start=1):
        if not s.index.equals(first.index):
            raise ValueError(f"per-query tables 0 and {i} hold different queries ({len(first)} vs "
                             f"{len(s)} rows): the seeds of a system must be evaluated on the same data")
    if len(series) == 1:
        return first
    return pd.Series(np.mean([s.to_numpy() for s in series], axis=0), index=first.index, name=value)


def macro_weights(index: pd.MultiIndex, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(row mask, weights) such that metric = sum(weights * ap[mask]), as metrics.summarise computes it."""
    if metric not in HEADLINE:
        raise ValueError(f"metric must be one of {list(HEADLINE)}, got {metric!r}")
    setting, group_cols = HEADLINE[metric]
    frame = index.to_frame(index=False)
    mask = (frame["setting"] == setting).to_numpy()
    rows = frame[mask]
    if not len(rows):
        return mask, np.zeros(0)
    group = rows.groupby(list(group_cols), sort=False).ngroup().to_numpy()
    sizes = np.bincount(group)
    return mask, 1.0 / (len(sizes) * sizes[group])


def sign_flip_p_value(contributions: np.ndarray, n_permutations: int = DEFAULT_PERMUTATIONS,
                      seed: int = 0) -> float:
    """Two-sided sign-flip p-value of T = sum(contributions): each unit's sign is flipped with
    probability 1/2, independently; p = (1 + #{|T_perm| >= |T_obs|}) / (1 + n_permutations)."""
    u = np.asarray(contributions, dtype=np.float64).reshape(-1)
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    if not np.isfinite(u).all():
        raise ValueError("contributions must be finite")
    n = len(u)
    observed = abs(u.sum())
    # Floating-point slack, so that permutations equal to the observed value (e.g. identical systems,
    # or the identity flip) count as ">=" despite summation-order rounding.
    threshold = observed - 1e-9 * np.abs(u).sum()
    if n == 0:
        return 1.0
    rng = np.random.default_rng(seed)
    total = u.sum()
    n_bytes = (n + 7) // 8
    block = max(1, _BLOCK_ELEMENTS // n)
    count = done = 0
    while done < n_permutations:
        m = min(block, n_permutations - done)
        # One random bit per unit: b in {0, 1}, sign s = 2b - 1, so sum(s u) = 2 (b . u) - sum(u).
        bits = np.unpackbits(rng.integers(0, 256, size=(m, n_bytes), dtype=np.uint8), axis=1, count=n)
        stats = 2.0 * (bits @ u) - total
        count += int(np.count_nonzero(np.abs(stats) >= threshold))
        done += m
    return (count + 1) / (n_permutations + 1)


def randomization_test(a: Tables, b: Tables, metric: str, *, unit: str = "question",
                       n_permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0,
                       value: str = "ap") -> PairedTest:
    """Paired sign-flip test of metric(A) - metric(B) over the shared queries of A and B.

    `a` and `b` are eval/per_query.parquet tables (or lists of them: seeds, averaged per query first;
    or per_query_ap's Series).
    """
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {list(UNITS)}, got {unit!r}")
    ap_a, ap_b = per_query_ap(a, value), per_query_ap(b, value)
    if not ap_a.index.equals(ap_b.index):
        only_a = ap_a.index.difference(ap_b.index)
        only_b = ap_b.index.difference(ap_a.index)
        example = (only_a if len(only_a) else only_b)[:1].tolist()
        raise ValueError(f"the two systems were scored on different queries ({len(only_a)} only in A, "
                         f"{len(only_b)} only in B, e.g. {example}); evaluate both on the same data/eval")
    mask, weights = macro_weights(ap_a.index, metric)
    if not mask.any():
        raise ValueError(f"no {HEADLINE[metric][0]!r} rows in the per-query tables: cannot test {metric}")
    xa, xb = ap_a.to_numpy()[mask], ap_b.to_numpy()[mask]
    wd = weights * (xa - xb)
    keys = ap_a.index.to_frame(index=False)[mask]
    unit_id = keys.groupby(list(UNITS[unit]), sort=False).ngroup().to_numpy()
    contributions = np.bincount(unit_id, weights=wd)
    return PairedTest(metric=metric, score_a=float(weights @ xa), score_b=float(weights @ xb),
                      diff=float(wd.sum()),
                      p_value=sign_flip_p_value(contributions, n_permutations, seed),
                      n_units=len(contributions), n_queries=int(mask.sum()),
                      n_permutations=n_permutations, unit=unit)


def compare_systems(a: Tables, b: Tables, metrics: Sequence[str] = ("mo", "cr", "mul"),
                    **kwargs: Any) -> dict[str, PairedTest]:
    """randomization_test for each headline metric (same seed, so the runs are reproducible)."""
    return {m: randomization_test(a, b, m, **kwargs) for m in metrics}


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input order.

    Rejecting where adjusted p < alpha controls the family-wise error rate at alpha.
    """
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted
