"""Exact search: ranks and top-k from score blocks against a brute-force numpy ranking and faiss
IndexFlatIP, including exact ties (duplicate vectors) and block boundaries."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from hybridir.evaluate.search import make_pool, normalise, relevant_ranks, search, top_k


def _vectors(n: int, dim: int = 32, seed: int = 0, duplicates: int = 0, integer: bool = False) -> np.ndarray:
    """Random unit vectors; `integer`: small integers instead, whose dot products are exact float32
    integers whatever the summation order (a BLAS's blocking cannot split a tie: for unit vectors numpy's
    OpenBLAS on an AVX2 CPU scored two identical candidates one ulp apart), with many ties."""
    rng = np.random.default_rng(seed)
    v = (rng.integers(-3, 4, (n, dim)).astype(np.float32) if integer
         else normalise(rng.standard_normal((n, dim)).astype(np.float32)))
    for i in range(duplicates):  # identical vectors give exactly tied scores
        v[n - 1 - i] = v[i]
    return v


def _brute_force_order(scores: np.ndarray) -> np.ndarray:
    """Full ranking per row: score descending, then column (= candidate id) descending."""
    cols = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    return np.lexsort((-cols, -scores), axis=1)


@pytest.fixture(scope="module")
def setup():
    cands = _vectors(300, seed=1, duplicates=5)
    queries = np.concatenate([_vectors(40, seed=2), cands[:3]])  # 3 queries equal to a candidate
    cids = np.array([f"zz/{i:05d}" for i in range(len(cands))])
    pool = make_pool(cids[::-1].copy(), cands[::-1].copy())  # make_pool must sort ids itself
    return queries, pool


def test_pool_is_sorted_and_validated(setup):
    _, pool = setup
    assert (pool.cids[1:] > pool.cids[:-1]).all()
    assert pool.columns(np.array(["zz/00007", "zz/00000"])).tolist() == [7, 0]
    with pytest.raises(ValueError, match="not in the candidate pool"):
        pool.columns(np.array(["zz/99999"]))
    with pytest.raises(ValueError, match="duplicate"):
        make_pool(["a", "a"], np.ones((2, 4), np.float32))


def test_ranks_and_top_k_equal_brute_force():
    cands = _vectors(300, seed=1, duplicates=5, integer=True)
    queries = np.concatenate([_vectors(40, seed=2, integer=True), cands[:3]])
    pool = make_pool(np.array([f"zz/{i:05d}" for i in range(len(cands))]), cands)
    scores = queries @ pool.vectors.T   # exact: the same numbers as search's own
    order = _brute_force_order(scores)
    n = len(pool)
    expected_rank = np.empty_like(order)
    np.put_along_axis(expected_rank, order, np.arange(1, n + 1)[None].repeat(len(order), 0), axis=1)
    # every column as "relevant": checks the rank of every candidate, ties included
    all_cols = np.broadcast_to(np.arange(n), (len(queries), n))
    res = search(queries, pool, all_cols, k=25, block_elements=7 * n)  # 7 rows per block
    np.testing.assert_array_equal(res.ranks, expected_rank)
    np.testing.assert_array_equal(res.top_columns, order[:, :25])
    np.testing.assert_array_equal(res.top_scores, np.take_along_axis(scores, order[:, :25], 1))
    # the duplicated candidates tie exactly, and the higher id wins
    dup = scores[:, 0] == scores[:, n - 1]
    assert dup.all() and (res.ranks[:, n - 1] < res.ranks[:, 0]).all()


def test_agrees_with_faiss_index_flat_ip(setup):
    queries, pool = setup
    index = faiss.IndexFlatIP(pool.vectors.shape[1])
    index.add(pool.vectors)
    D, I = index.search(queries, 11)
    res = search(queries, pool, np.zeros((len(queries), 1), dtype=np.int64), k=10)
    np.testing.assert_allclose(res.top_scores, D[:, :10], atol=1e-6)
    n_tied_rows = 0
    for i in range(len(queries)):
        values, counts = np.unique(D[i, :10], return_counts=True)
        unique_pos = np.isin(D[i, :10], values[counts == 1])
        # same candidate at every position whose score is not tied ...
        np.testing.assert_array_equal(res.top_columns[i][unique_pos], I[i, :10][unique_pos])
        if D[i, 9] != D[i, 10]:
            assert set(res.top_columns[i]) == set(I[i, :10])  # ... and the same top 10
        # ... while tied candidates (duplicate vectors) come in descending id order
        ours, our_counts = np.unique(res.top_scores[i], return_counts=True)
        for v in ours[our_counts > 1]:
            n_tied_rows += 1
            assert (np.diff(res.top_columns[i][res.top_scores[i] == v]) < 0).all()
    assert n_tied_rows >= 3  # the 3 queries that equal a duplicated candidate at least


def test_padding_and_k_beyond_the_pool(setup):
    queries, pool = setup
    rel = np.full((len(queries), 3), -1)
    rel[:, 0] = 5
    res = search(queries, pool, rel, k=10_000)
    assert res.top_columns.shape == (len(queries), len(pool))
    assert np.isnan(res.ranks[:, 1:]).all() and np.isfinite(res.ranks[:, 0]).all()
    with pytest.raises(ValueError):
        search(queries, pool, np.full((len(queries), 1), len(pool)), k=5)


def test_tie_across_the_top_k_cut():
    scores = np.array([[0.9, 0.5, 0.5, 0.5, 0.1]], dtype=np.float32)
    cols, vals = top_k(scores, 2)
    assert cols.tolist() == [[0, 3]]  # of the three tied 0.5s, the highest column (id) comes first
    cols, _ = top_k(scores, 3)
    assert cols.tolist() == [[0, 3, 2]]
    assert relevant_ranks(scores, np.array([[1, 2, 3]])).tolist() == [[4, 3, 2]]
