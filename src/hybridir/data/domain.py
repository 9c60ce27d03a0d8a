"""Domain training pairs: NFCorpus's train split (English, medical) appended to the pairs table.

Pairs: one row per (train query, relevant document) of qrels/train.tsv; query = the query text,
passage = the document's title + abstract cut to its first PASSAGE_WORDS words (a passage, as the
evaluation candidates are; train.passage_max_length would cut most abstracts about there anyway).
One group per query: its rows are its relevant documents, and a batch draws one of them each time
it uses the group, so a query is never twice in a batch. Every row is lang en, split train: the
validation rows (checkpoint selection) stay those of the parallel sources, the same for every
domain size. How batches use the domain source is in batches.py (`--domain-queries`).

No NFCorpus test data enters training: a pair is dropped when its document is relevant to a test
query (qrels/test.tsv), or its passage equals such a document's passage (a copy under another id),
or its query text equals a test query's; the dev split is not used. Most of the small corpus is
relevant to some test query (3,128 of 3,633 documents), so about 820 of the 2,590 train queries
keep a pair. Queries and passages equal to XQuAD-R / MLQA-R text are dropped too (as in traindata.py).

Output: `<out>/pairs.parquet` = the input pairs table unchanged (row ids kept) followed by the
domain rows, and `<out>/stats.json` (counts and what was removed, and why).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..atomic import atomic_path
from ..errors import BadInput
from ..evaluate.beir import beir_zip, read_beir
from .batches import DOMAIN_SOURCE, read_pairs
from .traindata import eval_texts, norm, overlaps

PASSAGE_WORDS = 100


def passage_of(text: str) -> str:
    return " ".join(text.split()[:PASSAGE_WORDS])


def nfcorpus_pairs(raw_dir: str | Path) -> tuple[pd.DataFrame, dict[str, int]]:
    """The domain rows (pairs-table columns but row_id) and how many train qrels each filter removed."""
    path = beir_zip(raw_dir, DOMAIN_SOURCE)
    train, test = read_beir(path, "train"), read_beir(path, "test")
    passages = dict(zip(train.corpus["doc_id"], train.corpus["text"].map(passage_of)))
    test_docs = set(test.qrels["doc_id"])
    test_passages = {norm(passages[d]) for d in test_docs if d in passages}
    test_queries = {norm(t) for t in test.queries["text"]}
    forbidden = eval_texts(raw_dir)
    queries = dict(zip(train.queries["qid"], train.queries["text"].map(lambda t: " ".join(t.split()))))

    qrels = train.qrels[train.qrels["score"] > 0]
    qrels = qrels[qrels["doc_id"].isin(set(passages))]   # BEIR keeps qrels of missing docs; no text here
    removed: dict[str, int] = {}

    def drop(name: str, bad: pd.Series) -> pd.DataFrame:
        removed[name] = int(bad.sum())
        return qrels[~bad]

    qrels = drop("test_relevant_doc", qrels["doc_id"].isin(test_docs))
    qrels = drop("test_relevant_passage_text", qrels["doc_id"].map(lambda d: norm(passages[d]) in test_passages))
    qrels = drop("test_query_text", qrels["qid"].map(lambda q: norm(queries[q]) in test_queries))
    qrels = drop("eval_overlap", qrels["qid"].map(lambda q: overlaps(queries[q], forbidden))
                 | qrels["doc_id"].map(lambda d: overlaps(passages[d], forbidden)))
    if qrels.empty:
        raise BadInput(f"{path}: no NFCorpus train pair is left after removing the test data")
    qrels = qrels.sort_values(["qid", "doc_id"], kind="stable")
    rows = pd.DataFrame({
        "source": DOMAIN_SOURCE, "group_id": DOMAIN_SOURCE + ":" + qrels["qid"],
        "lang": "en", "query": qrels["qid"].map(queries), "passage": qrels["doc_id"].map(passages),
        "split": "train", "doc_id": DOMAIN_SOURCE + ":" + qrels["doc_id"]}).reset_index(drop=True)
    return rows, removed


def with_domain(pairs: pd.DataFrame, domain: pd.DataFrame) -> pd.DataFrame:
    """`pairs` unchanged, then the domain rows numbered on (row_id = row index, as batches require)."""
    if (pairs["source"] == DOMAIN_SOURCE).any():
        raise BadInput(f"the pairs table already holds {DOMAIN_SOURCE} rows")
    domain = domain.assign(row_id=np.arange(len(pairs), len(pairs) + len(domain), dtype=np.int64))
    return pd.concat([pairs, domain[pairs.columns]], ignore_index=True)


def build_domain(raw_dir: str | Path, pairs_path: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write `<out_dir>/pairs.parquet` and stats.json (replaced atomically); returns the stats."""
    domain, removed = nfcorpus_pairs(raw_dir)
    combined = with_domain(read_pairs(pairs_path), domain)
    stats = {"queries": int(domain["group_id"].nunique()), "pairs": len(domain),
             "documents": int(domain["doc_id"].nunique()), "removed_train_qrels": removed,
             "passage_words": PASSAGE_WORDS}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        combined.to_parquet(tmp / "pairs.parquet", index=False)
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def _run(args: argparse.Namespace) -> int:
    stats = build_domain(args.raw, args.pairs, args.out)
    print(f"domain-data: {stats['pairs']} NFCorpus pairs ({stats['queries']} queries, {stats['documents']} "
          f"documents) appended -> {args.out}; removed train qrels: {stats['removed_train_qrels']}",
          file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("domain-data", help="append NFCorpus train pairs (domain data) to the pairs table")
    p.add_argument("--raw", default="data/raw", help="fetch-stage directory holding nfcorpus.zip")
    p.add_argument("--pairs", default="data/train/pairs.parquet")
    p.add_argument("--out", default="data/train_domain")
    p.set_defaults(func=_run)
