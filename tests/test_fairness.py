"""Language-fairness metrics (hybridir.fairness) on cases worked by hand."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from hybridir.evaluate import fairness as F

NAN = math.nan


def chi2_sf_1dof(h: float) -> float:
    """P(chi2 with 1 dof > h) = erfc(sqrt(h / 2)): the p-value of a two-language test."""
    return math.erfc(math.sqrt(h / 2))


def test_peer_non_relevant_level_by_hand():
    # Top 6: languages a a b a b b, none relevant. Ranks a {1,2,4}, b {3,5,6}; N = 6, mean rank 3.5,
    # group means 7/3 and 14/3: H = 12 / (6*7) * (3 (7/3 - 3.5)^2 + 3 (14/3 - 3.5)^2) = 7/3, no ties.
    ranks = np.arange(1, 7)
    langs = np.array(list("aababb"))
    grades = np.zeros(6, dtype=int)
    assert F.peer(ranks, langs, grades, {0: 1.0}, k=6) == pytest.approx(chi2_sf_1dof(7 / 3))   # 0.1266
    # Complete separation a a a b b b: means 2 and 5, H = 12/42 * (3 * 1.5^2 * 2) = 27/7, p = 0.0495.
    assert F.peer(ranks, np.array(list("aaabbb")), grades, {0: 1.0}) == pytest.approx(chi2_sf_1dof(27 / 7))
    # Only one language among the documents of the level: 1 by definition.
    assert F.peer(ranks, np.array(list("aaaaaa")), grades, {0: 1.0}) == 1.0


def test_peer_ranks_within_the_level_and_cutoff():
    # The same list with position 2 relevant (grade 1, language a) and a non-relevant b below the
    # cutoff (rank 9 > k = 6, left out). Non-relevant positions a {1,4}, b {3,5,6} -> ranks within the
    # level a {1,3}, b {2,4,5}: N = 5, mean 3, group means 2 and 11/3:
    # H = 12/30 * (2 * 1 + 3 * (2/3)^2) = 4/3.
    ranks = np.array([1, 2, 3, 4, 5, 6, 9])
    langs = np.array(list("aababbb"))
    grades = np.array([0, 1, 0, 0, 0, 0, 0])
    assert F.peer(ranks, langs, grades, {0: 1.0}, k=6) == pytest.approx(chi2_sf_1dof(4 / 3))   # 0.2482


def test_peer_relevant_level_one_per_language_is_constant():
    # One relevant per language: each group holds one rank, H = n - 1 whatever the ranks;
    # with n = 3 languages p = P(chi2_2 > 2) = exp(-1). This is why evaluation weights level 0 only.
    langs, grades = np.array(list("abc")), np.ones(3, dtype=int)
    for ranks in ([3, 40, 7], [1, 2, 3], [1, 500, 1000]):
        assert F.peer(np.array(ranks), langs, grades, {1: 1.0}) == pytest.approx(math.exp(-1))


def test_peer_unretrieved_relevant_tie_after_the_retrieved():
    # Grade 1: a at ranks 1 and 3; b never retrieved (NaN) and at 40 > k = 10 (unretrieved): both b tie
    # after the retrieved -> ranks a {1,2}, b {3.5,3.5}. N = 4, mean 2.5: H = 12/20 * (2*1 + 2*1) = 2.4,
    # tie correction 1 - (2^3 - 2) / (4^3 - 4) = 0.9 -> H = 8/3.
    ranks = np.array([1, 3, NAN, 40])
    langs = np.array(list("aabb"))
    assert F.peer(ranks, langs, np.ones(4, dtype=int), {1: 1.0}, k=10) == pytest.approx(chi2_sf_1dof(8 / 3))
    # Weighted: half on this level, half on a level with no documents (p = 1).
    assert F.peer(ranks, langs, np.ones(4, dtype=int), {1: 0.5, 0: 0.5}, k=10) == pytest.approx(
        0.5 * chi2_sf_1dof(8 / 3) + 0.5)
    with pytest.raises(ValueError):
        F.peer(ranks, langs, np.ones(4, dtype=int), {1: 0.5})


def test_multi_peer_matches_the_single_query_cases():
    # Row 0: the first case above; row 1: the second (relevant a at position 2, b's relevant at 9).
    top_langs = np.array([list("aababb"), list("aababb")])
    top_rel = np.array([[False] * 6, [False, True, False, False, False, False]])
    rel_ranks = np.array([[50.0, 80.0], [2.0, 9.0]])
    rel_langs = np.array([["a", "b"], ["a", "b"]])
    got = F.multi_peer(top_langs, top_rel, rel_ranks, rel_langs, k=6)
    assert got == pytest.approx([chi2_sf_1dof(7 / 3), chi2_sf_1dof(4 / 3)])


def test_rank_agreement_by_hand():
    # Three queries; ranks of their relevant candidates in languages a, b, c, d.
    # a and b rise together (rho = 1), c falls as they rise (rho = -1 with each);
    # d exists for two queries only (< 3 shared queries: no pair with d).
    table = pd.DataFrame({"a": [1, 2, 3], "b": [2, 4, 6], "c": [9, 5, 1], "d": [4, NAN, 8]})
    assert F.rank_agreement(table) == pytest.approx((1 - 1 - 1) / 3)
    # Spearman uses ranks only: a monotone transform of one language changes nothing.
    assert F.rank_agreement(table.assign(b=[20, 400, 6000])) == pytest.approx(-1 / 3)
    # Two query languages through the per_query layout; a constant column has no rho.
    multi = pd.DataFrame({"qlang": ["x"] * 3 + ["y"] * 3,
                          "rank_in_a": [1, 2, 3, 1, 2, 3], "rank_in_b": [2, 4, 6, 5, 5, 5]})
    by_lang = F.rank_agreement_by_lang(multi, ["x", "y"])
    assert by_lang["x"] == pytest.approx(1.0) and math.isnan(by_lang["y"])
