"""mMARCO (unicamp-dl/mmarco on the Hugging Face hub) as rows of the training-pairs table.

For the paper profile (config/paper.yaml); the default offline run does not use it (the hub is
not reachable offline). The hub repository still ships a loading script, which current `datasets`
refuses, so its published TSV files are read with `datasets`' own csv loader (streaming: only
what is needed is read, nothing of the multi-GB collections is cached):
  data/triples.train.ids.small.tsv                        qid \t positive pid \t negative pid
  data/google/queries/train/<language>_queries.train.tsv  qid \t query text
  data/google/collections/<language>_collection.tsv       pid \t passage text
Query and passage ids are the same in every language (the translations are aligned), so a
query id is a group: group_id = "mmarco/<qid>", one row per language with the translated query
and the translated positive passage. Choices (the paper does not state them):
- queries: the first `max_queries` distinct query ids in the triples file's order (the file is
  already a random sample), each with the positive of its first triple; the triples' negatives
  are not used (the pairs table has no negative column; negatives are in-batch);
- split: a seeded shuffle of the selected query ids puts round(valid_fraction * n) in "valid";
- a language row is dropped when that language lacks the query or the passage.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import BadInput

SOURCE = "mmarco"
HUB_REPO = "unicamp-dl/mmarco"
REVISION = "6d039c4638c0ba3e46a9cb7b498b145e7edc6230"   # the hub repository's main branch, pinned
LANG_NAMES = {"ar": "arabic", "de": "german", "en": "english", "es": "spanish", "fr": "french",
              "hi": "hindi", "id": "indonesian", "it": "italian", "ja": "japanese", "nl": "dutch",
              "pt": "portuguese", "ru": "russian", "vi": "vietnamese", "zh": "chinese"}
PAPER_LANGS = ("en", "ar", "zh", "de", "es", "ru", "hi")   # the paper's mMARCO languages
TRIPLES = "data/triples.train.ids.small.tsv"
BATCH_ROWS = 200_000


def hub_root(revision: str = REVISION) -> str:
    return f"hf://datasets/{HUB_REPO}@{revision}"


def queries_file(lang: str) -> str:
    return f"data/google/queries/train/{_name(lang)}_queries.train.tsv"


def collection_file(lang: str) -> str:
    return f"data/google/collections/{_name(lang)}_collection.tsv"


def _name(lang: str) -> str:
    if lang not in LANG_NAMES:
        raise BadInput(f"mMARCO has no language {lang!r}; available: {', '.join(sorted(LANG_NAMES))}")
    return LANG_NAMES[lang]


def read_tsv(path: str, columns: list[str]) -> Iterator[pa.Table]:
    """A headerless TSV (local path or hf:// URL) streamed by `datasets` as Arrow tables of strings."""
    from datasets import Features, Value, load_dataset

    ds = load_dataset("csv", data_files={"train": path}, split="train", streaming=True, delimiter="\t",
                      column_names=columns, quoting=csv.QUOTE_NONE, na_filter=False,
                      features=Features({c: Value("string") for c in columns}))
    yield from ds.with_format("arrow").iter(batch_size=BATCH_ROWS)


def select_queries(root: str, max_queries: int | None) -> dict[str, str]:
    """qid -> positive pid: the first `max_queries` distinct qids of the triples file, first positive each."""
    chosen: dict[str, str] = {}
    for table in read_tsv(f"{root}/{TRIPLES}", ["qid", "pos", "neg"]):
        for qid, pos in zip(table["qid"].to_pylist(), table["pos"].to_pylist()):
            if qid not in chosen:
                chosen[qid] = pos
                if max_queries is not None and len(chosen) >= max_queries:
                    return chosen
    return chosen


def lookup(path: str, ids: set[str]) -> dict[str, str]:
    """id -> text for the wanted ids of a (qid|pid) \t text file, scanning it in Arrow batches."""
    wanted = pa.array(sorted(ids), type=pa.string())
    found: dict[str, str] = {}
    for table in read_tsv(path, ["id", "text"]):
        hit = table.filter(pc.is_in(table["id"], value_set=wanted))
        found.update(zip(hit["id"].to_pylist(), hit["text"].to_pylist()))
        if len(found) == len(ids):
            break
    return found


def mmarco_pairs(langs: list[str] | tuple[str, ...] = PAPER_LANGS, *, max_queries: int | None,
                 valid_fraction: float, seed: int, root: str | Path | None = None,
                 revision: str = REVISION) -> pd.DataFrame:
    """Pairs-table rows (row_id, source, group_id, lang, query, passage, split) for mMARCO.

    `root` is a directory laid out like the hub repository (tests use a local one); by default
    the pinned hub revision is read over hf://.
    """
    if not 0 <= valid_fraction < 1:
        raise BadInput(f"valid_fraction = {valid_fraction} must be in [0, 1)")
    base = str(root) if root is not None else hub_root(revision)
    positives = select_queries(base, max_queries)
    if not positives:
        raise BadInput(f"no training triples found in {base}/{TRIPLES}")
    qids = list(positives)
    rng = np.random.Generator(np.random.PCG64(seed))
    n_valid = int(round(valid_fraction * len(qids)))
    valid = set(np.asarray(qids, dtype=object)[rng.permutation(len(qids))[:n_valid]].tolist())
    pids = set(positives.values())
    rows = []
    for lang in langs:
        queries = lookup(f"{base}/{queries_file(lang)}", set(qids))
        passages = lookup(f"{base}/{collection_file(lang)}", pids)
        for qid in qids:
            q, p = queries.get(qid), passages.get(positives[qid])
            if q and p:
                rows.append((SOURCE, f"{SOURCE}/{qid}", lang, q, p, "valid" if qid in valid else "train"))
    pairs = pd.DataFrame.from_records(rows, columns=["source", "group_id", "lang", "query", "passage", "split"])
    order = {q: i for i, q in enumerate(qids)}
    lang_order = {l: i for i, l in enumerate(langs)}
    pairs = pairs.iloc[np.lexsort((pairs["lang"].map(lang_order), pairs["group_id"].str[len(SOURCE) + 1:]
                                   .map(order)))].reset_index(drop=True)
    pairs.insert(0, "row_id", np.arange(len(pairs), dtype=np.int64))
    return pairs
