"""Training pairs: real, same-language (query, passage) pairs whose translations share a group id.

Sources and the pairs they give (see README, "Training data"):
- wmt24pp, ntrex, tico19: multi-way parallel documents -> inverse-cloze pairs. The query is one aligned
  unit (an NTREX / TICO-19 sentence, a WMT24++ segment, which is a short paragraph); the passage is its
  neighbouring units in the SAME language and document (data.context_sentences per side, on one side
  drawn per group or on both sides; never the query unit itself). Every language of a group holds the
  translation of the same query and the same neighbours, so X-X and X-Y pairs can both be drawn.
  * WMT24++: aligned by segment_id; the canary row and is_bad_source segments are dropped; of the two
    Arabic references ar_SA (Modern Standard Arabic, Saudi Arabia) is used, ar_EG (Egyptian) is not,
    because the evaluation sets' Arabic is MSA. Documents with a single segment give no pair.
  * NTREX-128: line-aligned; DOCUMENT_IDS.tsv gives the document of every line.
  * TICO-19: the translation memories are aligned by tuid, which is "<document>:<running number>", in
    document order, so the documents are usable as context (30 documents). CMU_1 (141 sentences of
    CMU's medical-domain phrase list, sorted alphabetically) has no discourse order and is skipped. English comes from the
    majority of the five TMs; a stray Python bytes prefix ("b'") on some first sentences is removed.
- arcd: Arabic question -> the paragraph sentence holding its answer start (one-sentence passage, the
  evaluation candidates' format); monolingual, so its groups have one language (X-X pairs only).
- Tatoeba (context-free X<->en sentence pairs) and Mintaka (answers are English entity labels) give no
  same-language query-passage pair and are not used.

Zero overlap with evaluation: any unit whose text in any language, or any sentence inside it, equals
(after NFKC, case folding and whitespace normalisation) an XQuAD-R / MLQA-R question, candidate sentence
or paragraph is removed from its document in every language before pairs are built, so its group
disappears and no passage contains it. The build then re-checks every query, passage and passage
sentence and fails if any overlap is left.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
import unicodedata
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from ..atomic import atomic_path
from ..errors import BadInput, CannotRun, MissingInput
from .evaldata import DATASETS, raw_file, read_squad_json
from .sources import Source, find, load_registry, local_path

SOURCES = ("wmt24pp", "ntrex", "tico19", "arcd", "mmarco")
SOURCE_LANGS: dict[str, tuple[str, ...]] = {
    "wmt24pp": ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh"),
    "ntrex": ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh"),
    "tico19": ("ar", "en", "es", "hi", "ru", "zh"),
    "arcd": ("ar",),
    "mmarco": ("ar", "de", "en", "es", "hi", "ru", "zh"),  # hub only: the paper profile
}
WMT_FILES = {"ar": "ar_SA", "de": "de_DE", "el": "el_GR", "es": "es_MX", "hi": "hi_IN", "ru": "ru_RU",
             "th": "th_TH", "tr": "tr_TR", "vi": "vi_VN", "zh": "zh_CN"}
NTREX_FILES = {"en": "src.eng", "ar": "ref.arb", "de": "ref.deu", "el": "ref.ell", "es": "ref.spa",
               "hi": "ref.hin", "ru": "ref.rus", "th": "ref.tha", "tr": "ref.tur", "vi": "ref.vie",
               "zh": "ref.zho-CN"}
TICO_FILES = {"ar": "en-ar", "es": "en-es-LA", "hi": "en-hi", "ru": "en-ru", "zh": "en-zh"}
TICO_TM_LANG = {"es": "es-LA"}  # xml:lang inside the TMs where it differs from ours
TICO_UNORDERED_DOCS = {"CMU_1"}  # alphabetically sorted sentences: no context
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

# Sentence ends: Latin/Cyrillic/Greek punctuation, Arabic question mark, Devanagari danda, CJK stops.
_SENTENCE_END = re.compile(r"(?<=[.!?؟।])\s+|(?<=[。！？])")
_BYTES_PREFIX = re.compile(r"""^b['"]""")


@dataclass
class Document:
    """An ordered list of aligned units; units[i][lang] is unit i in language lang."""
    doc_id: str
    unit_ids: list[str]
    units: list[dict[str, str]]


@dataclass
class BuildReport:
    removed_units: dict[str, int] = field(default_factory=dict)    # units dropped for eval overlap
    skipped: dict[str, int] = field(default_factory=dict)          # unusable items (no context, bad answer)


def clean(text: str) -> str:
    """Collapse whitespace (some translations hold line breaks) and strip."""
    return " ".join(text.split())


def norm(text: str) -> str:
    """The key under which two strings count as the same text for the overlap check."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def sentences_of(text: str) -> list[str]:
    """A rough sentence split, used only to compare the sentences inside a unit with evaluation text."""
    return [s for s in (p.strip() for p in _SENTENCE_END.split(text)) if s]


def join_units(texts: list[str], lang: str) -> str:
    return ("" if lang == "zh" else " ").join(texts)


def _source_file(raw_dir: Path, suffix: str, registry: list[Source]) -> Path:
    path = local_path(raw_dir, find(registry, suffix))
    if not path.is_file():
        raise MissingInput(f"{path} is missing; run `hybridir fetch` to download the raw data")
    return path


# ---------------------------------------------------------------- readers: raw files -> documents

def read_wmt24pp(raw_dir: Path, langs: list[str], registry: list[Source]) -> list[Document]:
    """WMT24++ documents in segment order; English is the shared source side."""
    texts: dict[int, dict[str, str]] = {}
    doc_of: dict[int, str] = {}
    bad: set[int] = set()
    for lang in [lang for lang in langs if lang != "en"] or ["ar"]:  # English rides along in any file
        path = _source_file(raw_dir, f"/wmt24p/en-{WMT_FILES[lang]}.jsonl", registry)
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                row = json.loads(line)
                seg, doc = int(row["segment_id"]), str(row["document_id"])
                src, tgt, is_bad = row["source"], row["target"], bool(row["is_bad_source"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise BadInput(f"{path}: line {n} is not a WMT24++ record ({exc!r}); "
                               "delete the file and run `hybridir fetch` again") from exc
            if row.get("domain") == "canary" or doc == "canary" or is_bad:
                bad.add(seg)
                continue
            if doc_of.setdefault(seg, doc) != doc:
                raise BadInput(f"{path}: segment {seg} is in document {doc}, elsewhere in {doc_of[seg]}")
            unit = texts.setdefault(seg, {})
            unit.setdefault("en", clean(src))
            if lang in langs:
                unit[lang] = clean(tgt)
    docs: dict[str, Document] = {}
    for seg in sorted(set(texts) - bad):
        doc = docs.setdefault(doc_of[seg], Document(doc_of[seg], [], []))
        doc.unit_ids.append(str(seg))
        doc.units.append({lang: texts[seg][lang] for lang in langs if lang in texts[seg]})
    return list(docs.values())


def read_ntrex(raw_dir: Path, langs: list[str], registry: list[Source]) -> list[Document]:
    """NTREX-128 documents: line i of every language file is sentence i; DOCUMENT_IDS.tsv line i its doc."""
    ids_path = _source_file(raw_dir, "/DOCUMENT_IDS.tsv", registry)
    doc_ids = [line.split("\t")[0].strip() for line in ids_path.read_text(encoding="utf-8").splitlines()]
    lines: dict[str, list[str]] = {}
    for lang in langs:
        path = _source_file(raw_dir, f"/newstest2019-{NTREX_FILES[lang]}.txt", registry)
        lines[lang] = path.read_text(encoding="utf-8").splitlines()
        if len(lines[lang]) != len(doc_ids):
            raise BadInput(f"{path} has {len(lines[lang])} lines but {ids_path} has {len(doc_ids)}; "
                           "NTREX files must be line-aligned (re-fetch the raw data)")
    docs: dict[str, Document] = {}
    for i, doc_id in enumerate(doc_ids):
        doc = docs.setdefault(doc_id, Document(doc_id, [], []))
        doc.unit_ids.append(str(i))
        doc.units.append({lang: clean(lines[lang][i]) for lang in langs})
    return list(docs.values())


def _read_tmx(path: Path) -> list[tuple[str, dict[str, str]]]:
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith(".tmx")]
            if len(names) != 1:
                raise BadInput(f"{path}: expected one .tmx file inside, found {names}")
            root = ET.fromstring(zf.read(names[0]))
    except (zipfile.BadZipFile, ET.ParseError) as exc:
        raise BadInput(f"{path} is not a readable TMX zip ({exc}); delete it and run `hybridir fetch`") from exc
    out = []
    for tu in root.iter("tu"):
        segs = {tuv.get(XML_LANG): "".join(tuv.find("seg").itertext()) for tuv in tu.iter("tuv")}
        out.append((tu.get("tuid"), segs))
    return out


def read_tico19(raw_dir: Path, langs: list[str], registry: list[Source]) -> list[Document]:
    """TICO-19 documents from the en<->X translation memories, aligned by tuid ("<doc>:<n>")."""
    english: dict[str, Counter] = {}
    units: dict[str, dict[str, str]] = {}
    order: list[str] = []
    for lang in [lang for lang in TICO_FILES if lang in langs] or (["ar"] if "en" in langs else []):
        path = _source_file(raw_dir, f"/all.{TICO_FILES[lang]}.tmx.zip", registry)
        for tuid, segs in _read_tmx(path):
            tm_lang = TICO_TM_LANG.get(lang, lang)
            if not tuid or "en" not in segs or tm_lang not in segs:
                raise BadInput(f"{path}: translation unit {tuid!r} lacks a tuid or an en/{tm_lang} segment")
            if tuid not in units:
                units[tuid] = {}
                order.append(tuid)
            english.setdefault(tuid, Counter())[clean(_BYTES_PREFIX.sub("", segs["en"]))] += 1
            if lang in langs:
                units[tuid][lang] = clean(_BYTES_PREFIX.sub("", segs[tm_lang]))
    docs: dict[str, Document] = {}
    for tuid in order:
        doc_id = tuid.rsplit(":", 1)[0]
        if doc_id in TICO_UNORDERED_DOCS:
            continue
        if "en" in langs:
            units[tuid]["en"] = english[tuid].most_common(1)[0][0]
        doc = docs.setdefault(doc_id, Document(doc_id, [], []))
        doc.unit_ids.append(tuid.rsplit(":", 1)[1])
        doc.units.append(units[tuid])
    return list(docs.values())


_SENTENCE_GAP = re.compile(r"(?<=[.!?؟])\s+")
_ARCD_QUESTION_JUNK = (re.compile(r"^[\s\-–]+"), re.compile(r"\s+ال\s*$"))


def sentence_spans(context: str) -> tuple[list[int], list[int]]:
    """(starts, ends) of the sentences of an ARCD paragraph: split after . ! ? ؟ and white space."""
    ends = [m.start() for m in _SENTENCE_GAP.finditer(context)] + [len(context)]
    starts = [0] + [m.end() for m in _SENTENCE_GAP.finditer(context)]
    return starts, ends


def arcd_doc_id(p_index: int) -> str:
    """The document id of the ARCD paragraph at this position of arcd.json (pairs use "arcd:" + it)."""
    return f"p{p_index:04d}"


def arcd_pairs(raw_dir: Path, registry: list[Source]) -> tuple[list[dict[str, str]], int]:
    """ARCD (question, answer sentence) items; returns the items and how many questions were skipped."""
    path = local_path(raw_dir, find(registry, "/arcd.json"))
    items, skipped = [], 0
    for p_index, para in enumerate(read_squad_json(path)):
        context = para["context"]
        starts, ends = sentence_spans(context)
        for qa in para["qas"]:
            answer = qa["answers"][0]
            start = int(answer["answer_start"])
            if not clean(context[start:]).startswith(clean(answer["text"])):
                start = context.find(answer["text"])  # offset is off: trust the answer text
            question = qa["question"]
            for pattern in _ARCD_QUESTION_JUNK:  # crowd-sourcing leftovers: "- " prefixes, trailing "ال"
                question = pattern.sub("", question)
            question = clean(question)
            if start < 0 or not answer["text"].strip() or not question:
                skipped += 1
                continue
            index = next(i for i, end in enumerate(ends) if start < end)
            items.append({"doc_id": arcd_doc_id(p_index), "unit_id": str(qa["id"]), "query": question,
                          "passage": clean(context[starts[index]:ends[index]])})
    return items, skipped


# ---------------------------------------------------------------- evaluation overlap

def eval_texts(raw_dir: str | Path) -> set[str]:
    """Normalised text of every XQuAD-R / MLQA-R question, candidate sentence and paragraph (all languages)."""
    keys: set[str] = set()
    for dataset, (_folder, langs) in DATASETS.items():
        for lang in langs:
            for para in read_squad_json(raw_file(raw_dir, dataset, lang)):
                keys.add(norm(para["context"]))
                keys.update(norm(s) for s in para["sentences"])
                keys.update(norm(qa["question"]) for qa in para["qas"])
    keys.discard("")
    return keys


def text_keys(text: str) -> set[str]:
    """The keys a training text is compared under: the whole text and each sentence inside it."""
    return {norm(text)} | {norm(s) for s in sentences_of(text)}


def overlaps(text: str, forbidden: set[str]) -> bool:
    return not text_keys(text).isdisjoint(forbidden)


def drop_overlapping_units(docs: list[Document], forbidden: set[str]) -> tuple[list[Document], int]:
    """Remove, in every language, each unit that equals or contains evaluation text."""
    kept_docs, removed = [], 0
    for doc in docs:
        keep = [i for i, unit in enumerate(doc.units)
                if not any(overlaps(t, forbidden) for t in unit.values())]
        removed += len(doc.units) - len(keep)
        kept_docs.append(Document(doc.doc_id, [doc.unit_ids[i] for i in keep], [doc.units[i] for i in keep]))
    return kept_docs, removed


# ---------------------------------------------------------------- pairs

def _unit_hash(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")


def _has_word(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def inverse_cloze_rows(source: str, docs: list[Document], langs: list[str], context: int,
                       sides: str, seed: int) -> tuple[list[dict[str, Any]], int]:
    """One row per (window, language): query = one unit, passage = its neighbours in that language.

    Windows of 1 + context (sides "one": the query at a drawn end) or 1 + 2 * context units
    (sides "both": the query in the middle) tile each document without overlap.

    Units missing, empty or without a letter/digit (stray punctuation lines) in any of `langs` are
    removed from the document first, in every language, so a group always has all of `langs` and its
    passages are translations of each other.
    Returns the rows and the number of units skipped for that reason.
    """
    rows: list[dict[str, Any]] = []
    skipped = 0
    for doc in docs:
        keep = [i for i, u in enumerate(doc.units) if all(_has_word(u.get(lang, "")) for lang in langs)]
        skipped += len(doc.units) - len(keep)
        ids, units = [doc.unit_ids[i] for i in keep], [doc.units[i] for i in keep]
        n = len(units)
        if n < 2:
            skipped += n
            continue
        # Disjoint windows: no sentence belongs to two groups, so one group's passage is never
        # another group's query or passage (in-batch false negatives that swamp the loss).
        width = 1 + context * (1 if sides == "one" else 2)
        for start in range(0, n - width + 1, width):
            window = list(range(start, start + width))
            if sides == "one":  # the query at one end of the window, drawn per window (seeded)
                at_end = _unit_hash(seed, f"{source}:{doc.doc_id}:{ids[start]}") % 2 == 0
                i = window[-1] if at_end else window[0]
            else:
                i = window[context]
            group_id = f"{source}:{doc.doc_id}:{ids[i]}"
            neighbours = [j for j in window if j != i]
            for lang in langs:
                rows.append({"source": source, "group_id": group_id, "doc_id": f"{source}:{doc.doc_id}",
                             "lang": lang, "query": units[i][lang],
                             "passage": join_units([units[j][lang] for j in neighbours], lang)})
    return rows, skipped


def _document_order(doc_ids: Iterable[str], seed: int, source: str) -> list[str]:
    ordered = sorted(set(doc_ids))
    rng = np.random.default_rng([seed, int.from_bytes(source.encode(), "little") % (2**32)])
    return [ordered[i] for i in rng.permutation(len(ordered))]


def cap_groups(rows: pd.DataFrame, max_groups: int, seed: int) -> pd.DataFrame:
    """Keep at most `max_groups` groups per source, taking whole documents in a seeded order first."""
    kept = []
    for source, part in rows.groupby("source", sort=False):
        groups = part.drop_duplicates("group_id")[["doc_id", "group_id"]]
        by_doc = groups.groupby("doc_id", sort=False)["group_id"].apply(list).to_dict()
        chosen: list[str] = []
        for doc_id in _document_order(by_doc, seed, str(source)):
            chosen.extend(by_doc[doc_id][:max_groups - len(chosen)])
            if len(chosen) >= max_groups:
                break
        kept.append(part[part["group_id"].isin(set(chosen))])
    return pd.concat(kept, ignore_index=True)


def assign_split(rows: pd.DataFrame, valid_fraction: float, seed: int) -> pd.Series:
    """'train' / 'valid' per row. Whole documents go to valid (their passages share sentences), picked
    in a seeded order until about `valid_fraction` of each source's groups are held out."""
    split = pd.Series("train", index=rows.index)
    for source, part in rows.groupby("source", sort=False):
        sizes = part.groupby("doc_id")["group_id"].nunique().to_dict()
        target = round(valid_fraction * sum(sizes.values()))
        valid_docs, n_valid = set(), 0
        for doc_id in _document_order(sizes, seed + 1, str(source)):
            if n_valid >= target:
                break
            if n_valid + sizes[doc_id] <= target:
                valid_docs.add(doc_id)
                n_valid += sizes[doc_id]
        split[part.index[part["doc_id"].isin(valid_docs)]] = "valid"
    return split


def build_pairs(raw_dir: str | Path, data_params: dict[str, Any]) -> tuple[pd.DataFrame, BuildReport]:
    """The pairs table (contract columns plus doc_id) for data.train_sources x data.train_langs."""
    raw_dir = Path(raw_dir)
    registry = load_registry()
    train_langs = list(data_params["train_langs"])
    context, sides, seed = data_params["context_sentences"], data_params["context_sides"], data_params["seed"]
    forbidden = eval_texts(raw_dir)
    report = BuildReport()
    readers = {"wmt24pp": read_wmt24pp, "ntrex": read_ntrex, "tico19": read_tico19}
    frames = []
    for source in data_params["train_sources"]:
        if source not in SOURCES:
            raise BadInput(f"data.train_sources: unknown source {source!r}; known: {', '.join(SOURCES)}")
        langs = [lang for lang in SOURCE_LANGS[source] if lang in train_langs]
        if not langs:
            raise BadInput(f"training source {source} has no language in data.train_langs {train_langs} "
                           f"(it has {', '.join(SOURCE_LANGS[source])}); remove it from data.train_sources")
        if source == "arcd":
            items, skipped = arcd_pairs(raw_dir, registry)
            clean_items = [it for it in items
                           if not (overlaps(it["query"], forbidden) or overlaps(it["passage"], forbidden))]
            report.removed_units[source] = len(items) - len(clean_items)
            report.skipped[source] = skipped
            rows = [{"source": source, "group_id": f"arcd:{it['unit_id']}", "doc_id": f"arcd:{it['doc_id']}",
                     "lang": "ar", "query": it["query"], "passage": it["passage"]} for it in clean_items]
        elif source == "mmarco":
            from .mmarco import mmarco_pairs  # needs the hub (or a local copy): the paper profile only
            found = mmarco_pairs(langs, max_queries=data_params.get("max_groups_per_source"),
                                 valid_fraction=data_params["valid_fraction"], seed=seed)
            leaks = (found["query"].map(lambda t: overlaps(t, forbidden))
                     | found["passage"].map(lambda t: overlaps(t, forbidden)))
            clean = found[~found["group_id"].isin(set(found.loc[leaks, "group_id"]))]  # whole groups
            report.removed_units[source] = found["group_id"].nunique() - clean["group_id"].nunique()
            rows = [{"source": source, "group_id": r.group_id, "doc_id": r.group_id, "lang": r.lang,
                     "query": r.query, "passage": r.passage} for r in clean.itertuples()]
        else:
            docs = readers[source](raw_dir, langs, registry)
            docs, report.removed_units[source] = drop_overlapping_units(docs, forbidden)
            rows, report.skipped[source] = inverse_cloze_rows(source, docs, langs, context, sides, seed)
        if not rows:
            raise BadInput(f"training source {source} gave no pairs for languages {langs}; "
                           "remove it from data.train_sources")
        frames.append(pd.DataFrame(rows))
    pairs = pd.concat(frames, ignore_index=True)
    if pairs.duplicated(["group_id", "lang"]).any():
        dup = pairs.loc[pairs.duplicated(["group_id", "lang"]), "group_id"].iloc[0]
        raise CannotRun(f"group {dup} has two rows in one language (duplicate unit ids in the raw data?)")
    if data_params.get("max_groups_per_source"):
        pairs = cap_groups(pairs, data_params["max_groups_per_source"], seed)
    leaked = [t for t in pd.concat([pairs["query"], pairs["passage"]]) if overlaps(t, forbidden)]
    if leaked:  # cannot happen after the filters above; guards the zero-shot promise
        raise CannotRun(f"{len(leaked)} training texts equal evaluation text, e.g. {leaked[0]!r}")
    pairs["split"] = assign_split(pairs, data_params["valid_fraction"], seed)
    pairs = pairs.sort_values(["source", "split", "group_id", "lang"], kind="stable").reset_index(drop=True)
    pairs.insert(0, "row_id", np.arange(len(pairs), dtype=np.int64))
    return pairs[["row_id", "source", "group_id", "lang", "query", "passage", "split", "doc_id"]], report


def count_table(pairs: pd.DataFrame) -> pd.DataFrame:
    return (pairs.groupby(["source", "lang", "split"]).size().rename("n").reset_index()
            .sort_values(["source", "lang", "split"], ignore_index=True))


def build_all(raw_dir: str | Path, out_dir: str | Path,
              data_params: dict[str, Any]) -> tuple[pd.DataFrame, BuildReport]:
    """Write pairs.parquet, counts.csv and stats.json into `out_dir` (replaced atomically)."""
    pairs, report = build_pairs(raw_dir, data_params)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        pairs.to_parquet(tmp / "pairs.parquet", index=False)
        count_table(pairs).to_csv(tmp / "counts.csv", index=False)
        groups = pairs.drop_duplicates("group_id").groupby(["source", "split"]).size()
        stats = {"groups": {f"{s}/{sp}": int(n) for (s, sp), n in groups.items()},
                 "rows": int(len(pairs)),
                 "removed_for_eval_overlap": report.removed_units,
                 "skipped_unusable": report.skipped}
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return pairs, report


def _run(args: argparse.Namespace) -> int:
    params = args.params
    t0 = time.perf_counter()
    pairs, report = build_all(args.raw, args.out, params["data"])
    table = count_table(pairs).pivot_table(index=["source", "split"], columns="lang", values="n",
                                           aggfunc="sum", fill_value=0)
    print(table.astype(int).to_string(), file=sys.stderr)
    print(f"removed for evaluation overlap (units): {report.removed_units}; "
          f"skipped (no context / incomplete / bad answer): {report.skipped}", file=sys.stderr)
    print(f"wrote {len(pairs)} pairs to {args.out} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-data", help="build parallel training pairs (inverse cloze, ARCD QA)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--raw", default="data/raw", help="fetched raw data directory")
    p.add_argument("--out", default="data/train")
    p.set_defaults(func=_run)
