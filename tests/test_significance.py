"""Paired sign-flip tests on per-query tables shaped like `hybridir evaluate`'s per_query.parquet.

The statistic must be the headline metric as metrics.summarise computes it, the p-value must match an
exhaustive enumeration of all sign flips, and the test must find a clear gain and no gain where
there is none."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from hybridir.evaluate import metrics as M
from hybridir.evaluate.significance import (compare_systems, holm, per_query_ap, randomization_test,
                                   sign_flip_p_value)


def per_query_table(langs: list[str], n_questions: int, rng: np.random.Generator, *,
                    langs_per_question: tuple[int, int] | None = None) -> pd.DataFrame:
    """Rows for every cell a question appears in (mono, cross, multi), like evaluate.evaluate().

    With `langs_per_question`, each question exists in a random subset of that many languages
    (MLQA-R-like: some cells have fewer queries, some none); otherwise in all (XQuAD-R-like)."""
    rows = []
    for q in range(n_questions):
        qid = f"q{q:05d}"
        present = langs
        if langs_per_question:
            k = rng.integers(langs_per_question[0], langs_per_question[1] + 1)
            present = sorted(rng.choice(langs, size=k, replace=False).tolist())
        for x in present:
            for y in present:
                rows.append(("mono" if x == y else "cross", x, y, qid))
            rows.append(("multi", x, M.MULTI, qid))
    table = pd.DataFrame(rows, columns=["setting", "qlang", "clang", "qid"])
    # A question-level difficulty shared by all its cells, plus per-cell noise.
    difficulty = pd.Series(rng.beta(2, 2, n_questions), index=[f"q{q:05d}" for q in range(n_questions)])
    base = difficulty.loc[table["qid"]].to_numpy() + rng.normal(0, 0.1, len(table))
    table["ap"] = np.clip(base, 0.0, 1.0)
    # The other per-query columns metrics.summarise reads (values irrelevant to these tests).
    for col in ("r1", "r10", "ndcg10"):
        table[col] = (table["ap"] > 0.5).astype(float)
    table["rank_distance"] = np.where(table["setting"] == "multi", 3.0, np.nan)
    return table


def with_ap(table: pd.DataFrame, ap: np.ndarray) -> pd.DataFrame:
    out = table.copy()
    out["ap"] = np.clip(ap, 0.0, 1.0)
    return out


def headline(table: pd.DataFrame, metric: str) -> float:
    """The metric as the evaluate stage reports it (metrics.summarise)."""
    langs = sorted(set(table["qlang"]))
    return M.summarise(table, langs)[metric]


def test_statistic_is_the_headline_metric_difference() -> None:
    rng = np.random.default_rng(1)
    a = per_query_table(["ar", "de", "en", "es", "hi"], 60, rng, langs_per_question=(2, 4))
    b = with_ap(a, a["ap"].to_numpy() + rng.normal(0.02, 0.1, len(a)))
    for metric in ("mo", "cr", "mul"):
        result = randomization_test(a, b, metric, n_permutations=200)
        assert result.score_a == pytest.approx(headline(a, metric), abs=1e-12)
        assert result.score_b == pytest.approx(headline(b, metric), abs=1e-12)
        assert result.diff == pytest.approx(headline(a, metric) - headline(b, metric), abs=1e-12)
        assert result.n_units == 60


def test_identical_systems_give_p_one() -> None:
    rng = np.random.default_rng(2)
    a = per_query_table(["de", "en", "zh"], 50, rng)
    for result in compare_systems(a, a.copy()).values():
        assert result.diff == 0.0
        assert result.p_value == 1.0


def test_clear_consistent_gain_is_significant_at_real_size() -> None:
    """XQuAD-R-sized: 11 languages x 1,190 questions (157k per-query rows), a gain of 0.02 mAP with
    per-query noise 5x larger; 10,000 permutations in seconds."""
    rng = np.random.default_rng(3)
    langs = ["ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh"]
    b = per_query_table(langs, 1190, rng)
    a = with_ap(b, b["ap"].to_numpy() + 0.02 + rng.normal(0, 0.1, len(b)))
    for metric, result in compare_systems(a, b).items():
        assert result.n_permutations == 10_000
        assert result.n_units == 1190
        assert result.diff > 0.01, metric
        assert result.p_value < 0.01, (metric, result)
    # And a system with pure noise and no gain is not "significant".
    c = with_ap(b, b["ap"].to_numpy() + rng.normal(0, 0.1, len(b)))
    c_result = randomization_test(c, b, "cr", n_permutations=2000)
    assert c_result.p_value > 0.01


def test_every_query_in_a_cell_as_unit_is_vectorised() -> None:
    """unit='cell' flips 1,190 x 110 cross-lingual rows independently: still fast (blockwise)."""
    rng = np.random.default_rng(4)
    langs = ["ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh"]
    b = per_query_table(langs, 1190, rng)
    a = with_ap(b, b["ap"].to_numpy() + rng.normal(0, 0.1, len(b)))
    result = randomization_test(a, b, "cr", unit="cell", n_permutations=2000)
    assert result.n_units == 1190 * 110
    assert 0.0 < result.p_value <= 1.0


def test_monte_carlo_p_matches_exhaustive_enumeration() -> None:
    """All 2^12 assignments of the two systems' results to 12 questions (each question's rows swap
    together), the macro statistic recomputed from scratch for each (cell means with bincount, then
    the mean over cells / languages): the Monte-Carlo p of 20,000 random flips agrees within
    sampling error."""
    rng = np.random.default_rng(5)
    langs = ["de", "en", "es"]
    a = per_query_table(langs, 12, rng, langs_per_question=(2, 3))
    b = with_ap(a, a["ap"].to_numpy() - 0.04 + rng.normal(0, 0.15, len(a)))
    qids = sorted(set(a["qid"]))
    row_q = a["qid"].map({q: i for i, q in enumerate(qids)}).to_numpy()
    ap_a, ap_b = a["ap"].to_numpy(), b["ap"].to_numpy()
    group_of = {"mo": ["qlang", "clang"], "cr": ["qlang", "clang"], "mul": ["qlang"]}
    setting_of = {"mo": "mono", "cr": "cross", "mul": "multi"}

    for metric in ("mo", "cr", "mul"):
        rows = (a["setting"] == setting_of[metric]).to_numpy()
        cell = a[rows].groupby(group_of[metric]).ngroup().to_numpy()
        sizes = np.bincount(cell)

        def macro(ap: np.ndarray) -> float:
            return float((np.bincount(cell, weights=ap[rows]) / sizes).mean())

        observed = macro(ap_a) - macro(ap_b)
        assert observed == pytest.approx(headline(a, metric) - headline(b, metric), abs=1e-12)
        count = 0
        for signs in itertools.product((False, True), repeat=len(qids)):
            swap = np.asarray(signs)[row_q]
            t = macro(np.where(swap, ap_b, ap_a)) - macro(np.where(swap, ap_a, ap_b))
            count += abs(t) >= abs(observed) - 1e-12
        exact = count / 2 ** len(qids)
        n = 20_000
        mc = randomization_test(a, b, metric, n_permutations=n, seed=7)
        assert mc.diff == pytest.approx(observed, abs=1e-12)
        assert abs(mc.p_value - exact) < 4 * np.sqrt(exact * (1 - exact) / n) + 2 / n, (metric, exact, mc.p_value)
        assert 0.001 < exact < 0.9, (metric, exact)  # a non-trivial case


def test_question_unit_is_more_conservative_than_cells_for_clustered_gains() -> None:
    """A gain carried by a few questions (in all their cells): counting each cell as independent
    calls it highly significant, flipping whole questions does not -- the reason for the default."""
    rng = np.random.default_rng(6)
    langs = ["ar", "de", "en", "es", "hi", "ru", "zh"]
    b = per_query_table(langs, 40, rng)
    lucky = b["qid"].isin(["q00003", "q00017"]).to_numpy()
    a = with_ap(b, b["ap"].to_numpy() + np.where(lucky, 0.5, 0.0) + rng.normal(0, 0.02, len(b)))
    by_cell = randomization_test(a, b, "cr", unit="cell", n_permutations=5000)
    by_question = randomization_test(a, b, "cr", unit="question", n_permutations=5000)
    assert by_cell.diff == by_question.diff
    assert by_cell.p_value < 0.001
    assert by_question.p_value > 0.05


def test_seed_averaged_systems() -> None:
    rng = np.random.default_rng(8)
    base = per_query_table(["de", "en", "zh"], 80, rng)
    seeds = [with_ap(base, base["ap"].to_numpy() + rng.normal(0.03, 0.1, len(base))) for _ in range(3)]
    averaged = per_query_ap(seeds)
    assert averaged.to_numpy() == pytest.approx(np.mean([s.set_index(["setting", "qlang", "clang", "qid"])
                                                         .sort_index()["ap"].to_numpy() for s in seeds], axis=0))
    result = randomization_test(seeds, base, "mo", n_permutations=500)
    assert result.score_a == pytest.approx(np.mean([headline(s, "mo") for s in seeds]), abs=1e-12)
    # Shuffled row order must not matter: rows are matched on (setting, qlang, clang, qid).
    shuffled = [s.sample(frac=1.0, random_state=i) for i, s in enumerate(seeds)]
    assert randomization_test(shuffled, base, "mo", n_permutations=500) == result


def test_mismatched_queries_are_refused() -> None:
    rng = np.random.default_rng(9)
    a = per_query_table(["de", "en"], 20, rng)
    with pytest.raises(ValueError, match="different queries"):
        randomization_test(a, a.iloc[:-3], "mo")
    with pytest.raises(ValueError, match="same data"):
        per_query_ap([a, a.iloc[5:]])
    with pytest.raises(ValueError, match="lacks columns"):
        per_query_ap(a.drop(columns="ap"))
    with pytest.raises(ValueError, match="metric"):
        randomization_test(a, a, "map")


def test_sign_flip_p_value_of_a_single_unit() -> None:
    # One unit: the two flips give |T| = |T_obs| both times, so p = 1 exactly (the +1 convention).
    assert sign_flip_p_value(np.array([0.3]), n_permutations=100) == 1.0
    # 20 equal positive contributions: only the all-+ and all-- flips reach |T_obs| (2 / 2^20).
    p = sign_flip_p_value(np.full(20, 0.01), n_permutations=5000)
    assert p == pytest.approx(1 / 5001, abs=2e-4)


def test_holm_known_example() -> None:
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    # sorted: 0.005*4 = .02, 0.01*3 = .03, 0.03*2 = .06, 0.04*1 = .04 -> monotone .06
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert len(holm([])) == 0
