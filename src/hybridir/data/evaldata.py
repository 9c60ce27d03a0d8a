"""Evaluation tables for XQuAD-R and MLQA-R (LAReQA's retrieval versions of XQuAD and MLQA dev).

Each dataset becomes three tables (see the data contract in README):
  queries    lang, qid, text          one row per question and language it exists in
  candidates lang, cid, text, context_id   one row per paragraph sentence (LAReQA's `sentences`)
  qrels      qid, lang, cid           per question and language, the sentence holding the answer start

Conventions, chosen so that the counts equal LAReQA's published table exactly:
- Candidates are NOT deduplicated. Every sentence of every paragraph is its own candidate, even when
  the same string occurs twice in a language (XQuAD-R ar 2, hi 1, ru 1, tr 1, zh 4 repeats; MLQA-R ar 1,
  en 2, hi 7, vi 2): deduplicating would give e.g. zh 1192 instead of the published 1196. Identical strings
  embed identically, so a repeat only ties with its twin; the one relevant repeat (XQuAD-R tr "I.", the
  fragment left by splitting "I. Dünya Savaşı") is noted here as the single known tie.
- The relevant candidate is located with LAReQA's `sentence_breaks` (character spans into `context`): the
  sentence whose span holds the first answer's `answer_start`; a start that falls in the whitespace between
  two spans belongs to the following sentence.
- Questions are aligned across languages by their id: XQuAD-R ids are shared by all 11 languages; MLQA-R ids
  are shared by the 2-4 languages a question was translated into (en holds every question).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..atomic import atomic_path
from ..errors import BadInput, MissingInput
from .sources import find, load_registry, local_path

DATASETS: dict[str, tuple[str, tuple[str, ...]]] = {
    # dataset -> (registry folder, languages)
    "xquad_r": ("xquad-r", ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh")),
    "mlqa_r": ("mlqa-r", ("ar", "de", "en", "es", "hi", "vi", "zh")),
}


@dataclass
class EvalTables:
    """One evaluation set (written by eval-data, read by evaluate)."""
    queries: pd.DataFrame     # lang, qid, text
    candidates: pd.DataFrame  # lang, cid, text, context_id
    qrels: pd.DataFrame       # qid, lang, cid


def dataset_langs(dataset: str, eval_langs: list[str] | None = None) -> list[str]:
    """The languages of `dataset`, restricted to `eval_langs` when given (order of the dataset)."""
    if dataset not in DATASETS:
        raise BadInput(f"unknown evaluation dataset {dataset!r}; known: {sorted(DATASETS)}")
    langs = [lang for lang in DATASETS[dataset][1] if eval_langs is None or lang in eval_langs]
    if not langs:
        raise BadInput(f"data.eval_langs {eval_langs} contains no language of {dataset} "
                       f"({', '.join(DATASETS[dataset][1])}); add one or drop {dataset} "
                       "from data.eval_datasets")
    return langs


def raw_file(raw_dir: str | Path, dataset: str, lang: str) -> Path:
    folder = DATASETS[dataset][0]
    return local_path(raw_dir, find(load_registry(), f"/{folder}/{lang}.json"))


def read_squad_json(path: Path) -> list[dict[str, Any]]:
    """The paragraphs of a SQuAD-format file, with a clear error for a missing or damaged file."""
    if not path.is_file():
        raise MissingInput(f"{path} is missing; run `hybridir fetch` to download the raw data")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path} is not valid JSON (truncated or corrupt download?): {exc}; "
                       "delete it and run `hybridir fetch` again") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise BadInput(f"{path}: expected a SQuAD-format object with a 'data' list")
    try:
        return [para for article in doc["data"] for para in article["paragraphs"]]
    except (KeyError, TypeError) as exc:
        raise BadInput(f"{path}: every item of 'data' needs a 'paragraphs' list ({exc!r})") from exc


def answer_sentence(breaks: list[list[int]], answer_start: int) -> int | None:
    """Index of the sentence span holding `answer_start` (a start in a gap goes to the next span)."""
    if answer_start < 0:
        return None
    for i, (_start, end) in enumerate(breaks):
        if answer_start < end:
            return i
    return None


def parse_language(path: Path, lang: str) -> tuple[list[dict], list[dict], list[dict]]:
    """Rows (queries, candidates, qrels) of one language file."""
    queries, candidates, qrels = [], [], []
    seen: set[str] = set()
    for p_index, para in enumerate(read_squad_json(path)):
        where = f"{path}: paragraph {p_index}"
        try:
            sentences, breaks, qas = para["sentences"], para["sentence_breaks"], para["qas"]
        except KeyError as exc:
            raise BadInput(f"{where} lacks field {exc} (is this LAReQA's -r version of the data?)") from exc
        if len(sentences) != len(breaks) or not sentences:
            raise BadInput(f"{where}: {len(sentences)} sentences but {len(breaks)} sentence_breaks")
        context_id = f"{lang}/c{p_index:04d}"
        first = len(candidates)
        for sentence in sentences:
            candidates.append({"lang": lang, "cid": f"{lang}/{len(candidates):05d}",
                               "text": sentence.strip(), "context_id": context_id})
        for qa in qas:
            try:
                qid, question, start = str(qa["id"]), qa["question"], int(qa["answers"][0]["answer_start"])
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                raise BadInput(f"{where}: question lacks id/question/answers[0].answer_start ({exc!r})") from exc
            if qid in seen:
                raise BadInput(f"{path}: question id {qid} occurs twice")
            seen.add(qid)
            index = answer_sentence(breaks, start)
            if index is None:
                raise BadInput(f"{where}: answer_start {start} of question {qid} lies outside every "
                               "sentence_breaks span")
            queries.append({"lang": lang, "qid": qid, "text": question.strip()})
            qrels.append({"qid": qid, "lang": lang, "cid": candidates[first + index]["cid"]})
    return queries, candidates, qrels


def subsample_queries(queries: pd.DataFrame, max_per_lang: int, seed: int) -> pd.DataFrame:
    """At most `max_per_lang` questions per language, taken from one seeded order of all ids.

    One shared order keeps parallel questions together: with XQuAD-R every language gets the same
    ids; with MLQA-R the languages overlap as much as the data allow.
    """
    rank = queries["qid"].map(lambda qid: hashlib.sha256(f"{seed}:{qid}".encode()).hexdigest())
    first = rank.groupby(queries["lang"]).rank(method="first") <= max_per_lang
    return queries[first].reset_index(drop=True)


def build_dataset(raw_dir: str | Path, dataset: str, eval_langs: list[str] | None = None,
                  max_queries_per_lang: int | None = None, seed: int = 0,
                  pool: str = "full") -> EvalTables:
    """Parse one dataset's language files from the fetched raw directory into the three tables."""
    rows: tuple[list, list, list] = ([], [], [])
    for lang in dataset_langs(dataset, eval_langs):
        for acc, part in zip(rows, parse_language(raw_file(raw_dir, dataset, lang), lang)):
            acc.extend(part)
    queries, candidates, qrels = (pd.DataFrame(r) for r in rows)
    if dataset == "xquad_r":  # 11-way parallel: every question must exist in every language
        per_qid = queries.groupby("qid")["lang"].nunique()
        n_langs = queries["lang"].nunique()
        if (per_qid != n_langs).any():
            bad = per_qid[per_qid != n_langs].index[:5].tolist()
            raise BadInput(f"xquad_r: question ids {bad} are missing in some language files "
                           f"under {raw_dir}; XQuAD-R must be {n_langs}-way parallel")
    if max_queries_per_lang is not None:
        # qrels keep every language of a kept question: cross-lingual and multilingual cells need them
        queries = subsample_queries(queries, max_queries_per_lang, seed)
        qrels = qrels[qrels["qid"].isin(set(queries["qid"]))].reset_index(drop=True)
    if pool == "kept_contexts":
        # Quick runs only: shrink each pool to the paragraphs that hold a kept question's answer.
        kept = set(candidates.loc[candidates["cid"].isin(set(qrels["cid"])), "context_id"])
        candidates = candidates[candidates["context_id"].isin(kept)].reset_index(drop=True)
    return EvalTables(queries, candidates, qrels)


def dataset_stats(tables: EvalTables) -> dict[str, Any]:
    langs = sorted(set(tables.candidates["lang"]))
    count = lambda df: {lang: int(n) for lang, n in df.groupby("lang").size().items()}  # noqa: E731
    return {"languages": langs,
            "queries": count(tables.queries), "candidates": count(tables.candidates),
            "qrels": count(tables.qrels), "unique_qids": int(tables.queries["qid"].nunique())}


def stats_line(stats: dict[str, Any]) -> str:
    """'lang queries/candidates ...' from dataset_stats, for the stage logs."""
    return " ".join(f"{lang} {stats['queries'].get(lang, 0)}/{stats['candidates'][lang]}"
                    for lang in stats["languages"])


def write_dataset(tables: EvalTables, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tables.queries.to_parquet(out_dir / "queries.parquet", index=False)
    tables.candidates.to_parquet(out_dir / "candidates.parquet", index=False)
    tables.qrels.to_parquet(out_dir / "qrels.parquet", index=False)
    (out_dir / "stats.json").write_text(json.dumps(dataset_stats(tables), indent=2) + "\n")


def build_all(raw_dir: str | Path, out_dir: str | Path, data_params: dict[str, Any]) -> dict[str, dict]:
    """Write data/eval/<dataset>/ for every dataset in data.eval_datasets; the whole directory is
    replaced atomically. Returns the stats per dataset."""
    stats = {}
    with atomic_path(out_dir) as tmp:
        for dataset in data_params["eval_datasets"]:
            tables = build_dataset(raw_dir, dataset, data_params.get("eval_langs"),
                                   data_params.get("eval_max_queries_per_lang"), data_params.get("seed", 0),
                                   data_params.get("eval_pool", "full"))
            write_dataset(tables, tmp / dataset)
            stats[dataset] = dataset_stats(tables)
    return stats


def _run(args: argparse.Namespace) -> int:
    params = args.params
    t0 = time.perf_counter()
    stats = build_all(args.raw, args.out, params["data"])
    for dataset, s in stats.items():
        print(f"{dataset}: queries/candidates {stats_line(s)}", file=sys.stderr)
    print(f"wrote {args.out} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval-data", help="build XQuAD-R / MLQA-R query, candidate and qrels tables")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--raw", default="data/raw", help="fetched raw data directory")
    p.add_argument("--out", default="data/eval")
    p.set_defaults(func=_run)
