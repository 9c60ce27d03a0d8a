"""Exact inner-product search over a candidate pool, with full-ranking ranks of the relevant candidates.

Scores are exact float32 inner products of L2-normalised vectors (cosine), computed with faiss
(`faiss.pairwise_distances`, METRIC_INNER_PRODUCT: the arithmetic IndexFlatIP ranks by) one block of
queries at a time. From each block of scores we take, without sorting whole rankings:
- the rank of every relevant candidate: 1 + the number of candidates ranked before it, counted on
  the score row, so metrics use the FULL ranking (pools are at most ~21k candidates);
- the top k, for TREC run files (faiss's k-min-heap selection over the same scores, so run files
  and metrics never disagree about an order).

Ties are broken exactly as trec_eval (and so pytrec_eval / ir_measures) breaks them: score
descending, then candidate id descending (trec_eval's `comp_sim_docno` compares docnos in reverse
`strcmp` order). Our metrics therefore equal trec_eval's on our run files even where scores tie, e.g.
for a sentence that occurs twice in a language. A `Pool` keeps its candidates sorted by id, so "id
descending" is "column index descending". (BLAS may round a score differently in the last bit
depending on the block it is computed in; within one evaluation each score is computed once and used
for both the ranks and the run file.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import faiss
import numpy as np

# Score-block size in matrix elements (float32): 2**24 = 64 MiB per block, plus a boolean of the same
# shape while counting.
BLOCK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class Pool:
    """A candidate pool: ids sorted ascending, vectors in the same order."""
    cids: np.ndarray      # str
    vectors: np.ndarray   # float32 (n, dim), L2-normalised

    def __len__(self) -> int:
        return len(self.cids)

    def columns(self, cids: np.ndarray) -> np.ndarray:
        """Column index of each id (ValueError naming the first id not in the pool)."""
        cids = np.asarray(cids, dtype=str)
        if not len(cids):
            return np.zeros(0, dtype=np.int64)
        pos = np.searchsorted(self.cids, cids)
        pos = np.minimum(pos, len(self.cids) - 1)
        bad = self.cids[pos] != cids
        if bad.any():
            raise ValueError(f"candidate id {cids[bad][0]!r} is not in the candidate pool")
        return pos.astype(np.int64)


@dataclass(frozen=True)
class SearchResult:
    ranks: np.ndarray       # float64 (n_queries, m): 1-based rank of each relevant column, NaN = padding
    top_columns: np.ndarray  # int64 (n_queries, k): pool columns, best first
    top_scores: np.ndarray   # float32 (n_queries, k)


def normalise(vectors: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit L2 norm (so that inner product = cosine)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if (norms == 0).any() or not np.isfinite(norms).all():
        raise ValueError("embeddings contain zero or non-finite vectors")
    return np.ascontiguousarray(vectors / norms, dtype=np.float32)


def make_pool(cids: np.ndarray | list[str], vectors: np.ndarray) -> Pool:
    """A pool sorted by candidate id; duplicate ids are an error."""
    cids = np.asarray(cids, dtype=str)
    vectors = np.asarray(vectors, dtype=np.float32)
    if len(cids) != len(vectors) or len(cids) == 0:
        raise ValueError(f"pool needs one vector per id, got {len(cids)} ids and {len(vectors)} vectors")
    order = np.argsort(cids, kind="stable")
    cids = cids[order]
    if (cids[1:] == cids[:-1]).any():
        raise ValueError(f"duplicate candidate id {cids[1:][cids[1:] == cids[:-1]][0]!r}")
    return Pool(cids, np.ascontiguousarray(vectors[order]))


def score_blocks(queries: np.ndarray, pool: Pool,
                 block_elements: int = BLOCK_ELEMENTS) -> Iterator[tuple[slice, np.ndarray]]:
    """(rows, scores) for consecutive blocks of queries; scores is float32 (len(rows), len(pool))."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != pool.vectors.shape[1]:
        raise ValueError(f"query vectors {queries.shape} do not match pool vectors {pool.vectors.shape}")
    step = max(1, block_elements // len(pool))
    for start in range(0, len(queries), step):
        rows = slice(start, min(start + step, len(queries)))
        yield rows, faiss.pairwise_distances(queries[rows], pool.vectors, faiss.METRIC_INNER_PRODUCT)


def relevant_ranks(scores: np.ndarray, rel_columns: np.ndarray) -> np.ndarray:
    """1-based full-ranking rank of each relevant column (padding: -1 -> NaN).

    rank = 1 + #(score > s) + #(score == s and column > c), the trec_eval order above.
    """
    rel_columns = np.asarray(rel_columns, dtype=np.int64)
    n_rows, n_cols = scores.shape
    ranks = np.full(rel_columns.shape, np.nan)
    for j in range(rel_columns.shape[1]):
        col = rel_columns[:, j]
        rows = np.flatnonzero(col >= 0)
        if not len(rows):
            continue
        sub = scores if len(rows) == n_rows else scores[rows]
        s = sub[np.arange(len(rows)), col[rows]][:, None]
        above = np.count_nonzero(sub > s, axis=1)
        ties = np.count_nonzero(sub == s, axis=1)  # includes the candidate itself
        for i in np.flatnonzero(ties > 1):  # rare: identical texts embed identically
            tied = np.flatnonzero(sub[i] == s[i])
            above[i] += np.count_nonzero(tied > col[rows[i]])
        ranks[rows, j] = above + 1
    return ranks


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best columns per row (score desc, column desc) and their scores.

    Selection uses faiss's k-min-heap over the score rows (one C pass); the heap keeps the first of
    equal scores at the cut, so rows with a tie across the cut are redone in trec_eval order.
    """
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    n_rows, n_cols = scores.shape
    k = min(k, n_cols)
    values = np.empty((n_rows, k), dtype=np.float32)
    cols = np.empty((n_rows, k), dtype=np.int64)
    if n_rows and k:
        heap = faiss.float_minheap_array_t()  # keeps the k largest values per row
        heap.nh, heap.k = n_rows, k
        heap.val, heap.ids = faiss.swig_ptr(values), faiss.swig_ptr(cols)
        heap.heapify()
        heap.addn(n_cols, faiss.swig_ptr(scores), 0, 0, n_rows)
        kth = values.min(axis=1, keepdims=True)
        for i in np.flatnonzero(np.count_nonzero(scores >= kth, axis=1) > k):
            cols[i] = np.lexsort((-np.arange(n_cols), -scores[i]))[:k]
            values[i] = scores[i, cols[i]]
    order = np.lexsort((-cols, -values), axis=1)
    return np.take_along_axis(cols, order, axis=1), np.take_along_axis(values, order, axis=1)


def search(queries: np.ndarray, pool: Pool, rel_columns: np.ndarray, k: int,
           block_elements: int = BLOCK_ELEMENTS) -> SearchResult:
    """Ranks of the relevant columns (full ranking) and the top-k list for every query."""
    rel_columns = np.asarray(rel_columns, dtype=np.int64)
    if rel_columns.ndim != 2 or len(rel_columns) != len(queries):
        raise ValueError("rel_columns must be (n_queries, m), padded with -1")
    if len(pool) and (rel_columns >= len(pool)).any():
        raise ValueError("relevant column outside the pool")
    k = min(k, len(pool))
    ranks = np.full(rel_columns.shape, np.nan)
    top_cols = np.empty((len(queries), k), dtype=np.int64)
    top_scores = np.empty((len(queries), k), dtype=np.float32)
    for rows, scores in score_blocks(queries, pool, block_elements):
        ranks[rows] = relevant_ranks(scores, rel_columns[rows])
        top_cols[rows], top_scores[rows] = top_k(scores, k)
    return SearchResult(ranks, top_cols, top_scores)
