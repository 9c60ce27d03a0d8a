"""A small real pairs table (the data contract of data/train/pairs.parquet) built from the mirror.

Used by tests/test_batches.py and tests/test_train.py so they do not depend on the train-data
stage. Three kinds of source, as in the real table:
- ntrex: multi-way parallel news (9 languages per group), inverse-cloze pairs: query = sentence i,
  passage = sentence i+1 of the same document;
- tatoeba: bilingual groups (X and en), query = the sentence, passage = the same sentence
  (only the group structure matters here);
- arcd: monolingual Arabic question -> its paragraph.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from hybridir.data.sources import find, load_registry

NTREX_LANGS = {"en": "src.eng", "ar": "ref.arb", "de": "ref.deu", "es": "ref.spa", "hi": "ref.hin",
               "ru": "ref.rus", "th": "ref.tha", "tr": "ref.tur", "zh": "ref.zho-CN"}
TATOEBA = {"de": "deu", "es": "spa", "ru": "rus"}


def _lines(mirror: Path, suffix: str) -> list[str]:
    src = find(load_registry(), suffix)
    return (mirror / src.relpath).read_text(encoding="utf-8").splitlines()


def build_pairs(mirror: Path, *, ntrex_lines: int = 600, tatoeba_lines: int = 200,
                arcd_questions: int = 150, valid_fraction: float = 0.1, seed: int = 0) -> pd.DataFrame:
    records: list[tuple[str, str, str, str, str]] = []
    docs = _lines(mirror, "NTREX/8561f6a622db9edad1217683e5c83daefd8bb2bf/DOCUMENT_IDS.tsv")
    texts = {lang: _lines(mirror, f"NTREX-128/newstest2019-{code}.txt") for lang, code in NTREX_LANGS.items()}
    for i in range(min(ntrex_lines, len(docs) - 1)):
        if docs[i] != docs[i + 1]:
            continue  # the next sentence belongs to another document
        for lang in NTREX_LANGS:
            records.append(("ntrex", f"ntrex/{i}", lang, texts[lang][i], texts[lang][i + 1]))
    for lang, code in TATOEBA.items():
        xs = _lines(mirror, f"tatoeba.{code}-eng.{code}")
        ens = _lines(mirror, f"tatoeba.{code}-eng.eng")
        for i in range(tatoeba_lines):
            gid = f"tatoeba/{code}/{i}"
            records.append(("tatoeba", gid, lang, xs[i], xs[i]))
            records.append(("tatoeba", gid, "en", ens[i], ens[i]))
    arcd = json.loads((mirror / find(load_registry(), "data/arcd.json").relpath).read_text(encoding="utf-8"))
    n = 0
    for article in arcd["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                if n < arcd_questions:
                    records.append(("arcd", f"arcd/{qa['id']}", "ar", qa["question"], para["context"]))
                    n += 1
    pairs = pd.DataFrame.from_records(records, columns=["source", "group_id", "lang", "query", "passage"])
    groups = np.sort(pairs["group_id"].unique())
    rng = np.random.default_rng(seed)
    valid = set(rng.choice(groups, size=int(round(valid_fraction * len(groups))), replace=False).tolist())
    pairs["split"] = np.where(pairs["group_id"].isin(valid), "valid", "train")
    pairs.insert(0, "row_id", np.arange(len(pairs), dtype=np.int64))
    return pairs
