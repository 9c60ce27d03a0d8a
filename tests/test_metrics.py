"""Metric definitions: hand-worked cases, aggregation rules, and agreement with trec_eval
(ir_measures / pytrec_eval) on rankings full of tied scores."""
from __future__ import annotations

import math

import ir_measures
import numpy as np
import pandas as pd
import pytest

from hybridir.evaluate import metrics as M
from hybridir.evaluate.search import make_pool, relevant_ranks

NAN = math.nan


# ------------------------------------------------------------------ per-query definitions by hand

@pytest.mark.parametrize("r", [1, 2, 3, 7, 10, 11, 500])
def test_single_relevant_at_rank_r(r):
    ranks, n = np.array([[r]]), np.array([1])
    assert M.average_precision(ranks, n)[0] == pytest.approx(1 / r)
    assert M.recall_at(ranks, n, 1)[0] == (r == 1)
    assert M.recall_at(ranks, n, 10)[0] == (r <= 10)
    assert M.ndcg_at(ranks, n, 10)[0] == pytest.approx(1 / math.log2(r + 1) if r <= 10 else 0.0)
    assert M.rank_distance(ranks)[0] == 0  # a single relevant: distance 0 by definition


def test_all_relevant_at_the_top_is_perfect():
    ranks = np.array([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]], dtype=float)
    n = np.array([11])
    assert M.average_precision(ranks, n)[0] == pytest.approx(1.0)
    assert M.ndcg_at(ranks, n, 10)[0] == pytest.approx(1.0)
    assert M.recall_at(ranks, n, 10)[0] == pytest.approx(10 / 11)  # trec_eval recall_10
    assert M.recall_at(ranks, n, 1)[0] == pytest.approx(1 / 11)
    # order of the rank columns does not matter
    assert M.average_precision(ranks[:, ::-1], n)[0] == pytest.approx(1.0)


def test_two_relevant_worked_example():
    # relevant at ranks 1 and 3: precisions 1/1 and 2/3
    ranks, n = np.array([[3, 1]]), np.array([2])
    assert M.average_precision(ranks, n)[0] == pytest.approx((1 + 2 / 3) / 2)
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    idcg = 1 / math.log2(2) + 1 / math.log2(3)
    assert M.ndcg_at(ranks, n, 10)[0] == pytest.approx(dcg / idcg)
    assert M.rank_distance(ranks)[0] == 2


def test_unretrieved_relevant_counts_in_the_denominator():
    # one relevant found at rank 2, a second never retrieved (NaN): (1/2 + 0) / 2
    assert M.average_precision(np.array([[2, NAN]]), np.array([2]))[0] == pytest.approx(0.25)
    # same with the missing one not even listed: n_relevant alone carries it
    assert M.average_precision(np.array([[2]]), np.array([3]))[0] == pytest.approx(1 / 6)
    assert M.recall_at(np.array([[2]]), np.array([3]), 10)[0] == pytest.approx(1 / 3)
    # nothing retrieved at all
    assert M.average_precision(np.array([[NAN]]), np.array([1]))[0] == 0.0


def test_padding_does_not_change_scores():
    padded = np.array([[4, NAN, NAN], [2, 9, 30]])
    n = np.array([1, 3])
    q = M.query_metrics(padded, n)
    assert q["ap"] == pytest.approx([1 / 4, (1 / 2 + 2 / 9 + 3 / 30) / 3])
    assert q["rank_distance"].tolist() == [0, 28]
    assert q["best_rank"].tolist() == [4, 2]


def test_rank_distance_with_languages_missing():
    # MLQA-R-like: a question in 2 languages (relevants at ranks 5 and 40, the rest padding),
    # one in 4 languages, one in a single language.
    ranks = np.array([[5, 40, NAN, NAN], [3, 10, 7, 1], [12, NAN, NAN, NAN]])
    assert M.rank_distance(ranks).tolist() == [35, 9, 0]


def test_bad_input_is_rejected():
    with pytest.raises(ValueError):
        M.average_precision(np.array([[1, 2]]), np.array([1]))  # more found than relevant
    with pytest.raises(ValueError):
        M.average_precision(np.array([[0]]), np.array([1]))     # ranks are 1-based


def test_tied_scores_rank_by_candidate_id_descending():
    # cids sorted ascending are columns 0..3; b and c tie: trec_eval puts the larger id (c) first
    pool = make_pool(["d/a", "d/b", "d/c", "d/d"], np.eye(4, dtype=np.float32))
    scores = np.array([[0.5, 0.9, 0.9, 0.1]], dtype=np.float32)
    assert relevant_ranks(scores, pool.columns(np.array(["d/b"]))[None]).tolist() == [[2.0]]
    assert relevant_ranks(scores, pool.columns(np.array(["d/c"]))[None]).tolist() == [[1.0]]
    assert relevant_ranks(scores, pool.columns(np.array(["d/a"]))[None]).tolist() == [[3.0]]


# ------------------------------------------------------------------ agreement with trec_eval

def _trec_eval(scores: np.ndarray, relevant: list[list[int]], cids: np.ndarray) -> pd.DataFrame:
    run = [ir_measures.ScoredDoc(f"q{i}", str(cids[j]), float(scores[i, j]))
           for i in range(scores.shape[0]) for j in range(scores.shape[1])]
    qrels = [ir_measures.Qrel(f"q{i}", str(cids[j]), 1) for i, rel in enumerate(relevant) for j in rel]
    measures = [ir_measures.AP, ir_measures.nDCG @ 10, ir_measures.R @ 1, ir_measures.R @ 10]
    rows = [(m.query_id, str(m.measure), m.value) for m in ir_measures.iter_calc(measures, qrels, run)]
    return pd.DataFrame(rows, columns=["qid", "measure", "value"]).pivot(index="qid", columns="measure",
                                                                         values="value")


def test_agrees_with_trec_eval_on_heavily_tied_scores():
    """Scores rounded to one decimal tie everywhere; our tie order must be trec_eval's."""
    rng = np.random.default_rng(7)
    n_q, n_c = 40, 60
    cids = np.array([f"x/{i:03d}" for i in range(n_c)])
    scores = np.round(rng.random((n_q, n_c)), 1).astype(np.float32)
    relevant = [sorted(rng.choice(n_c, size=rng.integers(1, 13), replace=False).tolist())  # up to 12 > k=10
                for _ in range(n_q)]
    width = max(len(r) for r in relevant)
    rel_cols = np.array([r + [-1] * (width - len(r)) for r in relevant])
    ours = M.query_metrics(relevant_ranks(scores, rel_cols), np.array([len(r) for r in relevant]))
    ref = _trec_eval(scores, relevant, cids).loc[[f"q{i}" for i in range(n_q)]]
    np.testing.assert_allclose(ours["ap"], ref["AP"], atol=1e-6)
    np.testing.assert_allclose(ours["ndcg10"], ref["nDCG@10"], atol=1e-6)
    np.testing.assert_allclose(ours["r1"], ref["R@1"], atol=1e-6)
    np.testing.assert_allclose(ours["r10"], ref["R@10"], atol=1e-6)


# ------------------------------------------------------------------ aggregation

def _per_query() -> pd.DataFrame:
    rows = [
        # setting, qlang, clang, qid, ap, rank_distance
        ("mono", "a", "a", "1", 1.0, NAN), ("mono", "a", "a", "2", 0.5, NAN),
        ("mono", "b", "b", "1", 0.25, NAN),
        ("cross", "a", "b", "1", 0.2, NAN),            # question 2 does not exist in b
        ("cross", "b", "a", "1", 0.4, NAN),
        ("mono", "c", "c", "3", 0.9, NAN),             # c shares no question with a or b
        ("multi", "a", M.MULTI, "1", 0.6, 10.0), ("multi", "a", M.MULTI, "2", 0.2, 0.0),
        ("multi", "b", M.MULTI, "1", 0.3, 40.0), ("multi", "c", M.MULTI, "3", 0.9, 0.0),
    ]
    df = pd.DataFrame(rows, columns=["setting", "qlang", "clang", "qid", "ap", "rank_distance"])
    for col in ("r1", "r10", "ndcg10"):
        df[col] = df["ap"]
    return df


def test_mo_cr_mul_and_rank_distance_are_macro_averages():
    langs = ["a", "b", "c"]
    pq = _per_query()
    ap = M.cell_matrix(pq, "ap", langs)
    assert ap.loc["a", "a"] == pytest.approx(0.75)          # mean over the queries of the cell
    assert math.isnan(ap.loc["a", "c"]) and math.isnan(ap.loc["c", "b"])  # no shared question
    assert M.cell_counts(pq, langs).loc["a", "a"] == 2
    s = M.summarise(pq, langs)
    assert s["mo"] == pytest.approx((0.75 + 0.25 + 0.9) / 3)
    assert s["cr"] == pytest.approx((0.2 + 0.4) / 2)        # undefined cells left out, not zero
    assert s["mul"] == pytest.approx((0.4 + 0.3 + 0.9) / 3)  # macro over query languages
    assert s["rank_distance"] == pytest.approx((5.0 + 40.0 + 0.0) / 3)
    assert s["n_cells"] == {"mono": 3, "cross": 2}
    assert s["per_lang"]["a"]["cr"] == pytest.approx(0.2)
    assert s["per_lang"]["a"]["cr_as_corpus"] == pytest.approx(0.4)
    assert s["per_lang"]["c"]["cr"] is None                 # NaN becomes JSON null
