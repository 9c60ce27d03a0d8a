"""Dev benchmark: the held-out documents of the training sources, as evaluation tables.

Recipe choices must not be made on XQuAD-R / MLQA-R (the paper's test sets). The dev benchmark uses
only pairs.parquet rows with split == 'valid' (whole documents that train-data held out, never in a
training batch) and is scored with exactly the evaluation protocol (`hybridir encode` and
`hybridir evaluate`: mono / cross / multilingual mAP matrices, rank distance) as dataset `dev`
(pipeline.scored_datasets). Its tables follow
evaldata.EvalTables, as in LAReQA (Roy et al. 2020, "LAReQA: Language-agnostic answer retrieval from a
multilingual pool"), with a group's translations in the role of a question's translations:
  queries     lang, qid = group_id, text = the group's query unit (a sentence, a WMT24++ segment)
  candidates  lang, cid = "<lang>/<group_id>", text = the group's passage (its neighbouring units),
              context_id = doc_id; every held-out passage of that language is in the pool
  qrels       qid, lang, cid: in every language, the passage of the query's own group
Single-language sources (arcd: Arabic QA) are left out: with no translations they have no
cross-lingual qrels and would only mix another task into one mono cell.

The held-out documents also give the validation loss that selects checkpoints (train.py), so a
selected model's dev scores lean slightly optimistic; they compare recipes, the test sets report.
The texts are checked once more against every XQuAD-R / MLQA-R text (traindata.overlaps): the pairs
are filtered already, this keeps the dev tables' own promise whatever pairs table they are given.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from .atomic import atomic_path
from .batches import read_pairs
from .errors import BadInput, CannotRun
from .evaldata import EvalTables, dataset_stats, write_dataset
from .traindata import SOURCE_LANGS, eval_texts, overlaps

def dev_tables(pairs: pd.DataFrame) -> EvalTables:
    """The dev benchmark from the held-out rows of the parallel sources (see the module docstring)."""
    single = {source for source, langs in SOURCE_LANGS.items() if len(langs) == 1}
    rows = pairs[(pairs["split"] == "valid") & ~pairs["source"].isin(single)]
    if rows.empty:
        raise BadInput("the pairs table has no held-out (split == 'valid') rows of a parallel source: "
                       "raise data.valid_fraction or add a parallel source to data.train_sources")
    if "doc_id" not in rows.columns:
        raise BadInput("the pairs table lacks doc_id; rebuild it with `hybridir train-data`")
    rows = rows.sort_values(["lang", "group_id"], kind="stable")
    cid = (rows["lang"] + "/" + rows["group_id"]).to_numpy()
    queries = pd.DataFrame({"lang": rows["lang"].to_numpy(), "qid": rows["group_id"].to_numpy(),
                            "text": rows["query"].str.strip().to_numpy()})
    candidates = pd.DataFrame({"lang": rows["lang"].to_numpy(), "cid": cid,
                               "text": rows["passage"].str.strip().to_numpy(),
                               "context_id": rows["doc_id"].to_numpy()})
    qrels = pd.DataFrame({"qid": rows["group_id"].to_numpy(), "lang": rows["lang"].to_numpy(), "cid": cid})
    return EvalTables(queries, candidates, qrels)


def check_no_eval_text(tables: EvalTables, forbidden: set[str]) -> None:
    """Raise CannotRun if a dev query or candidate equals or contains evaluation text."""
    texts = pd.concat([tables.queries["text"], tables.candidates["text"]])
    leaked = [t for t in texts if overlaps(t, forbidden)]
    if leaked:
        raise CannotRun(f"{len(leaked)} dev texts equal XQuAD-R / MLQA-R text, e.g. {leaked[0]!r}; "
                        "rebuild the pairs with `hybridir train-data`")


def build_dev(pairs_path: str | Path, raw_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write `out_dir` (queries, candidates, qrels, stats.json: evaldata's layout) atomically; returns the stats."""
    tables = dev_tables(read_pairs(pairs_path))
    check_no_eval_text(tables, eval_texts(raw_dir))
    with atomic_path(out_dir) as tmp:
        write_dataset(tables, tmp)
    return dataset_stats(tables)


def _run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    s = build_dev(args.pairs, args.raw, args.out)
    cells = " ".join(f"{lang} {s['queries'].get(lang, 0)}/{s['candidates'][lang]}" for lang in s["languages"])
    print(f"dev: queries/candidates {cells}; wrote {args.out} in {time.perf_counter() - t0:.1f}s",
          file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dev-data", help="build the dev benchmark from the held-out training documents")
    p.add_argument("--pairs", default="data/train/pairs.parquet")
    p.add_argument("--raw", default="data/raw", help="fetched raw data directory (for the overlap check)")
    p.add_argument("--out", default="data/dev")
    p.set_defaults(func=_run)
