"""Dev benchmark: the held-out documents of the training sources, as evaluation tables.

Recipe choices must not be made on XQuAD-R / MLQA-R (the paper's test sets). The dev benchmark uses
only pairs.parquet rows with split == 'valid' (whole documents that train-data held out, never in a
training batch) and is scored with exactly the evaluation protocol (`hybridir encode` and
`hybridir evaluate`: mono / cross / multilingual mAP matrices, rank distance) as dataset `dev`
(pipeline.stages.scored_datasets). Its tables follow
evaldata.EvalTables, as in LAReQA (Roy et al. 2020, "LAReQA: Language-agnostic answer retrieval from a
multilingual pool"), with a group's translations in the role of a question's translations:
  queries     lang, qid = group_id, text = the group's query unit (a sentence, a WMT24++ segment)
  candidates  lang, cid = "<lang>/<group_id>", text = the group's passage (its neighbouring units),
              context_id = doc_id; every held-out passage of that language is in the pool
  qrels       qid, lang, cid: in every language, the passage of the query's own group
Single-language sources (arcd: Arabic QA) are left out of it: with no translations they have no
cross-lingual qrels and would only mix another task into one mono cell. They give the second, monolingual
QA part instead, dataset `dev_qa` (--qa-out), built like XQuAD-R's candidates in one language:
  queries     the held-out ARCD questions (lang ar, qid = group_id)
  candidates  every sentence of their held-out paragraphs (traindata.sentence_spans, as the pairs
              were cut), cid = "ar/<doc_id>/<i>", context_id = doc_id
  qrels       the sentence holding the question's answer (its pair's passage)
It has one cell: its Mo. is monolingual QA retrieval quality on unseen paragraphs (Cr. is empty,
Mul. = Mo.).

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

from ..atomic import atomic_path
from ..errors import BadInput, CannotRun
from .batches import read_pairs
from .evaldata import EvalTables, dataset_stats, read_squad_json, stats_line, write_dataset
from .sources import find, load_registry, local_path
from .traindata import SOURCE_LANGS, arcd_doc_id, clean, eval_texts, overlaps, sentence_spans

QA_SOURCE = "arcd"

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


def qa_dev_tables(pairs: pd.DataFrame, raw_dir: str | Path) -> EvalTables:
    """The monolingual QA part: held-out ARCD questions against every sentence of their paragraphs."""
    rows = pairs[(pairs["split"] == "valid") & (pairs["source"] == QA_SOURCE)]
    if rows.empty:
        raise BadInput(f"the pairs table has no held-out (split == 'valid') {QA_SOURCE} rows for the QA dev "
                       "part: raise data.valid_fraction")
    docs = set(rows["doc_id"])
    cands = []
    path = local_path(Path(raw_dir), find(load_registry(), "/arcd.json"))
    for p_index, para in enumerate(read_squad_json(path)):
        doc = f"{QA_SOURCE}:{arcd_doc_id(p_index)}"
        if doc in docs:
            seen: set[str] = set()
            for i, (a, b) in enumerate(zip(*sentence_spans(para["context"]))):
                text = clean(para["context"][a:b])
                if text and text not in seen:   # a repeated sentence would be a second, unjudged copy
                    seen.add(text)
                    cands.append({"lang": "ar", "cid": f"ar/{doc}/{i}", "text": text, "context_id": doc})
    candidates = pd.DataFrame(cands)
    by_text = {(c["context_id"], c["text"]): c["cid"] for c in cands}
    cid = [by_text.get((d, t.strip())) for d, t in zip(rows["doc_id"], rows["passage"])]
    if None in cid:
        raise BadInput(f"{cid.count(None)} held-out {QA_SOURCE} answer sentences are not sentences of their "
                       "paragraph in the raw file: rebuild the pairs with `hybridir train-data`")
    rows = rows.assign(cid=cid).sort_values("group_id", kind="stable")
    queries = pd.DataFrame({"lang": "ar", "qid": rows["group_id"].to_numpy(),
                            "text": rows["query"].str.strip().to_numpy()})
    qrels = pd.DataFrame({"qid": rows["group_id"].to_numpy(), "lang": "ar", "cid": rows["cid"].to_numpy()})
    return EvalTables(queries, candidates, qrels)


def check_no_eval_text(tables: EvalTables, forbidden: set[str]) -> None:
    """Raise CannotRun if a dev query or candidate equals or contains evaluation text."""
    texts = pd.concat([tables.queries["text"], tables.candidates["text"]])
    leaked = [t for t in texts if overlaps(t, forbidden)]
    if leaked:
        raise CannotRun(f"{len(leaked)} dev texts equal XQuAD-R / MLQA-R text, e.g. {leaked[0]!r}; "
                        "rebuild the pairs with `hybridir train-data`")


def build_dev(pairs_path: str | Path, raw_dir: str | Path, out_dir: str | Path,
              qa_out: str | Path | None = None) -> dict[str, Any]:
    """Write `out_dir` (and the QA part to `qa_out`; queries, candidates, qrels, stats.json: evaldata's
    layout), each atomically and only when both were built; returns the stats by output."""
    pairs = read_pairs(pairs_path)
    parts = {Path(out_dir): dev_tables(pairs)}
    if qa_out is not None:
        parts[Path(qa_out)] = qa_dev_tables(pairs, raw_dir)
    forbidden = eval_texts(raw_dir)
    for tables in parts.values():
        check_no_eval_text(tables, forbidden)
    for out, tables in parts.items():
        with atomic_path(out) as tmp:
            write_dataset(tables, tmp)
    return {str(out): dataset_stats(tables) for out, tables in parts.items()}


def _run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    for out, s in build_dev(args.pairs, args.raw, args.out, args.qa_out).items():
        print(f"dev: {out}: queries/candidates {stats_line(s)}", file=sys.stderr)
    print(f"dev: done in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dev-data", help="build the dev benchmark from the held-out training documents")
    p.add_argument("--pairs", default="data/train/pairs.parquet")
    p.add_argument("--raw", default="data/raw", help="fetched raw data directory (for the overlap check)")
    p.add_argument("--out", default="data/dev")
    p.add_argument("--qa-out", default=None,
                   help="also write the monolingual QA part (held-out ARCD questions) here, e.g. data/dev_qa")
    p.set_defaults(func=_run)
