"""Batches stage: the table of training batches (X-X-mono, X-Y or hybrid), fixed before training.

Construction, per batch (one numpy Generator(PCG64(seed)) drives every draw, in this order):
1. Batch type: one uniform draw u per batch for every strategy; `hybrid` takes X-X-mono when
   u < alpha, else X-Y; `xx_mono` and `xy` ignore u. So hybrid at alpha 1 (0) gives exactly the
   batches of xx_mono (xy) with the same seed, and the alpha sweep's end points are those runs.
2. Source: among the sources that can give a batch of that type, drawn in proportion to the
   source's size = its number of *groups* in the split (a group is one item and all its
   translations; counting rows would favour sources with more languages).
3. X-X-mono: one language, drawn uniformly from the source's languages that have at least
   batch_size groups; then batch_size groups holding that language; each triplet is
   (query, passage) of that group's row in that language.
   X-Y: batch_size groups with at least two languages; per triplet the query language is drawn
   uniformly from the group's languages and the passage language uniformly from the others,
   so query language != passage language for every triplet. Single-language sources
   (e.g. ARCD) therefore give no X-Y batches.
4. Optional extra negative (train.extra_negatives = 1): a uniformly drawn row of the same
   source in the triplet's passage language whose group is not in the batch.

Sweeps: `--alpha` overrides train.alpha; `--group-fraction f` draws from a fixed share of each
source's training groups (nested across fractions, the same for every strategy and seed).

Domain data (`--domain-queries N`, pairs from domain.py): the domain source (NFCorpus, English only)
is left out unless N is given; then N of its groups (queries; nested across N like fractions) are
drawn from, as whole English X-X-mono batches in EVERY strategy: a uniform draw v per batch, from a
second generator (PCG64([seed, 1]), so every strategy has the same domain steps), makes it a domain
batch when v < N / (N + the other sources' groups), the sources' proportion to group counts. X-Y batches cannot hold one-language pairs, and using them only where
the strategy builds X-X-mono batches would give the X-Y baseline none and hybrid alpha of them; this
way every strategy sees domain batches at the same steps (same seed), and the strategy decides
only the other batches. A domain batch also leaves out a query when a passage in the batch is
relevant to it, or its passage is relevant to a query in the batch (its group's other documents):
NFCorpus queries share many documents, and those would be false negatives.

Bitext batches (`train.bitext_share` s > 0): translation ranking on the parallel sources: a uniform
draw w per batch from a third generator (PCG64([seed, 2]): the same steps in every strategy, like
domain batches) makes it a bitext batch when w < s (a domain step stays a domain step). It takes
batch_size groups from an X-Y pool (a source drawn as for X-Y); per triplet a query language X and
another language Y as for X-Y, and the pair (sentence in X, its translation in Y): the `query` texts
of the group's rows in X and Y (passage_row points at the Y row; train.py embeds that row's query
text, with the query prefix: both sides are sentences, as in LaBSE's translation ranking, Feng et
al. 2022, arXiv:2007.01852). The in-batch negatives are the other groups' translations, so a batch
aligns languages without asking for any same-language retrieval. It is a batch type of its own
("bitext") in the table and the training log.

Groups are unique within a batch (translations of one item would be false negatives), and so
are texts: no query text twice, no passage text twice among the positives and extra negatives
(ARCD questions on one paragraph share their passage; a copy in another group would be a false
negative). A drawn triplet whose query or passage text is already in the batch is not used:
its group is offered again to the next batch of the pool (step 4 draws another row).
Epochs: every pool (source x language for X-X-mono, source for X-Y) is a queue of its groups in
a shuffled order; batches take groups from the front, and a fresh shuffle is appended when the
queue runs dry, so no group of a pool repeats before all of them were used (except that a group
put off for a repeated text near the end of an epoch may come after the next epoch's first).
A pool smaller than batch_size cannot give a batch with unique groups: it is left out (reported
on stderr), and if no source can give a batch of a required type the stage fails and says what
to change.

The output is byte-identical for the same inputs and seed: fixed column types, no index,
fixed compression, and the settings stored as sorted JSON in the parquet metadata.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic import atomic_path
from ..errors import BadInput, MissingInput

STRATEGIES = ("xx_mono", "xy", "hybrid")
DOMAIN_SOURCE = "nfcorpus"   # the source of domain.py's rows: only in batches with --domain-queries
PAIRS_COLUMNS = ("row_id", "source", "group_id", "lang", "query", "passage", "split")
METADATA_KEY = b"hybridir.batches"

BATCH_SCHEMA = pa.schema([
    ("batch_id", pa.int64()),
    ("batch_type", pa.string()),
    ("source", pa.string()),
    ("group_id", pa.string()),
    ("query_lang", pa.string()),
    ("passage_lang", pa.string()),
    ("query_row", pa.int64()),
    ("passage_row", pa.int64()),
])
NEGATIVE_FIELD = pa.field("negative_row", pa.int64())


# ---------------------------------------------------------------- the pairs table, indexed


def read_pairs(path: str | Path) -> pd.DataFrame:
    """The pairs table, checked against the contract (row_id = row index, known split values)."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"pairs table {path} not found (run the train-data stage first)")
    pairs = pd.read_parquet(path)
    check_pairs(pairs, str(path))
    return pairs


def check_pairs(pairs: pd.DataFrame, name: str = "pairs table") -> None:
    missing = [c for c in PAIRS_COLUMNS if c not in pairs.columns]
    if missing:
        raise BadInput(f"{name} lacks columns {missing}; expected {list(PAIRS_COLUMNS)}")
    if not np.array_equal(pairs["row_id"].to_numpy(), np.arange(len(pairs))):
        raise BadInput(f"{name}: row_id must equal the row index 0..n-1 (rebuild the pairs table)")
    bad = sorted(set(pairs["split"].unique()) - {"train", "valid"})
    if bad:
        raise BadInput(f"{name}: split has values {bad}; allowed: train, valid")


def pairs_fingerprint(pairs: pd.DataFrame) -> str:
    """sha256 over (row_id, group_id, lang, split): ties a batch table to the pairs it indexes."""
    h = hashlib.sha256()
    for chunk in range(0, len(pairs), 100_000):
        part = pairs.iloc[chunk:chunk + 100_000]
        text = "".join(f"{r}\t{g}\t{l}\t{s}\n" for r, g, l, s in zip(
            part["row_id"], part["group_id"], part["lang"], part["split"]))
        h.update(text.encode("utf-8"))
    return h.hexdigest()


@dataclass
class SourceIndex:
    """One source's groups in one split: which languages each has and where its rows are."""
    name: str
    group_ids: list[str]                          # sorted
    group_langs: list[tuple[str, ...]]            # sorted languages of each group
    rows: dict[tuple[int, str], np.ndarray]       # (group index, lang) -> row ids (sorted)
    lang_groups: dict[str, np.ndarray] = field(default_factory=dict)   # lang -> group indices
    lang_rows: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # lang -> (rows, group idx)

    @property
    def size(self) -> int:
        return len(self.group_ids)

    def multilingual_groups(self) -> np.ndarray:
        return np.array([i for i, langs in enumerate(self.group_langs) if len(langs) >= 2], dtype=np.int64)


def index_sources(pairs: pd.DataFrame, split: str, langs: list[str] | None = None) -> dict[str, SourceIndex]:
    """Index the `split` rows (optionally only `langs`) by source, group and language, in sorted order."""
    rows = pairs[pairs["split"] == split]
    if langs is not None:
        rows = rows[rows["lang"].isin(langs)]
    out: dict[str, SourceIndex] = {}
    for source, part in sorted(rows.groupby("source", sort=True), key=lambda kv: kv[0]):
        part = part.sort_values(["group_id", "lang", "row_id"], kind="stable")
        gid = part["group_id"].to_numpy()
        lang = part["lang"].to_numpy()
        rid = part["row_id"].to_numpy(dtype=np.int64)
        group_ids = sorted(set(gid.tolist()))
        gpos = {g: i for i, g in enumerate(group_ids)}
        gidx = np.fromiter((gpos[g] for g in gid), dtype=np.int64, count=len(gid))
        by_key: dict[tuple[int, str], list[int]] = collections.defaultdict(list)
        for g, l, r in zip(gidx.tolist(), lang.tolist(), rid.tolist()):
            by_key[(g, l)].append(r)
        group_langs: list[set[str]] = [set() for _ in group_ids]
        for g, l in by_key:
            group_langs[g].add(l)
        idx = SourceIndex(str(source), group_ids, [tuple(sorted(s)) for s in group_langs],
                          {k: np.asarray(v, dtype=np.int64) for k, v in by_key.items()})
        for l in sorted(set(lang.tolist())):
            mask = lang == l
            idx.lang_rows[l] = (rid[mask], gidx[mask])
            idx.lang_groups[l] = np.unique(gidx[mask])
        out[str(source)] = idx
    return out


# ---------------------------------------------------------------- sampling


class EpochQueue:
    """Groups of one pool in shuffled epochs: none repeats before all were used."""

    def __init__(self, items: np.ndarray):
        self.items = np.asarray(items, dtype=np.int64)
        self.queue: collections.deque[int] = collections.deque()
        self.epochs = 0

    def take(self, n: int, rng: np.random.Generator,
             accept: Callable[[int], bool] = lambda g: True) -> list[int]:
        """n distinct groups that `accept` takes, in queue order; the others stay in front, in order."""
        if n > len(self.items):
            raise ValueError(f"cannot take {n} distinct groups from a pool of {len(self.items)}")
        picked: list[int] = []
        seen: set[int] = set()
        skipped: list[int] = []   # already in this batch (epoch boundary) or refused: kept for the next
        refills = 0
        while len(picked) < n:
            if not self.queue:
                refills += 1
                if refills == 2:   # every group was offered since the first refill: none left to try
                    raise BadInput(f"a pool of {len(self.items)} groups cannot give {n} triplets with "
                                   "distinct query and passage texts; lower train.batch_size or "
                                   "deduplicate the texts")
                self.queue.extend(rng.permutation(self.items).tolist())
                self.epochs += 1
            g = self.queue.popleft()
            if g in seen or not accept(g):
                skipped.append(g)
                continue
            picked.append(g)
            seen.add(g)
        self.queue.extendleft(reversed(skipped))
        return picked


@dataclass
class Pools:
    """Every source's eligible pools for one batch size, and what was left out (and why)."""
    xx: dict[str, dict[str, EpochQueue]]          # source -> lang -> queue
    xy: dict[str, EpochQueue]                     # source -> queue
    left_out: list[str]


def build_pools(index: dict[str, SourceIndex], batch_size: int) -> Pools:
    xx: dict[str, dict[str, EpochQueue]] = {}
    xy: dict[str, EpochQueue] = {}
    left_out: list[str] = []
    for name, src in index.items():
        langs = {}
        for lang, groups in src.lang_groups.items():
            if len(groups) >= batch_size:
                langs[lang] = EpochQueue(groups)
            else:
                left_out.append(f"{name}/{lang}: {len(groups)} groups < batch_size {batch_size} "
                                "(no X-X-mono batches in this language)")
        if langs:
            xx[name] = langs
        multi = src.multilingual_groups()
        if len(multi) >= batch_size:
            xy[name] = EpochQueue(multi)
        else:
            left_out.append(f"{name}: {len(multi)} groups with >= 2 languages < batch_size {batch_size} "
                            "(no X-Y batches from this source)")
    return Pools(xx, xy, left_out)


@dataclass
class TextIds:
    """Query and passage texts as integer ids by row id: equal texts, equal ids."""
    query: np.ndarray
    passage: np.ndarray

    @classmethod
    def of(cls, pairs: pd.DataFrame) -> "TextIds":
        return cls(pd.factorize(pairs["query"])[0], pd.factorize(pairs["passage"])[0])


@dataclass
class Batch:
    """The triplets of one batch so far, and the texts it holds (each at most once)."""
    texts: TextIds
    groups: list[int] = field(default_factory=list)
    qlangs: list[str] = field(default_factory=list)
    plangs: list[str] = field(default_factory=list)
    qrows: list[int] = field(default_factory=list)
    prows: list[int] = field(default_factory=list)
    negatives: list[int] = field(default_factory=list)
    query_texts: set[int] = field(default_factory=set)
    passage_texts: set[int] = field(default_factory=set)   # positives and extra negatives
    bitext: bool = False   # candidates are the query texts of the passage rows (translations)

    def add(self, group: int, qlang: str, plang: str, qrow: int, prow: int) -> bool:
        """Add the triplet unless its query or candidate text is already in the batch."""
        q = self.texts.query[qrow]
        p = self.texts.query[prow] if self.bitext else self.texts.passage[prow]
        if q in self.query_texts or p in self.passage_texts:
            return False
        self.query_texts.add(q)
        self.passage_texts.add(p)
        self.groups.append(group)
        self.qlangs.append(qlang)
        self.plangs.append(plang)
        self.qrows.append(qrow)
        self.prows.append(prow)
        return True

    def is_new_passage(self, row: int) -> bool:
        return self.texts.passage[row] not in self.passage_texts


def _pick_row(rows: np.ndarray, rng: np.random.Generator) -> int:
    return int(rows[0]) if len(rows) == 1 else int(rows[rng.integers(len(rows))])


def _add_xx(batch: Batch, src: SourceIndex, group: int, lang: str, rng: np.random.Generator) -> bool:
    row = _pick_row(src.rows[(group, lang)], rng)
    return batch.add(group, lang, lang, row, row)


def _add_xy(batch: Batch, src: SourceIndex, group: int, rng: np.random.Generator) -> bool:
    glangs = src.group_langs[group]
    ql = glangs[int(rng.integers(len(glangs)))]
    others = [l for l in glangs if l != ql]
    pl = others[int(rng.integers(len(others)))]
    return batch.add(group, ql, pl, _pick_row(src.rows[(group, ql)], rng), _pick_row(src.rows[(group, pl)], rng))


def _add_negatives(batch: Batch, src: SourceIndex, rng: np.random.Generator) -> None:
    """Per triplet, a row in its passage language, of a group not in the batch, with a new passage text."""
    outside: dict[str, np.ndarray] = {}   # lang -> rows whose group is not in the batch
    members = np.asarray(batch.groups, dtype=np.int64)
    for lang in batch.plangs:
        if lang not in outside:
            rows, gidx = src.lang_rows[lang]
            outside[lang] = rows[~np.isin(gidx, members)]
        row = _new_passage_row(batch, outside[lang], rng)
        if row is None:
            raise BadInput(f"source {src.name}, language {lang}: no row outside the batch with a passage "
                           "text not in it, to use as extra negative; set train.extra_negatives: 0 or add data")
        batch.negatives.append(row)
        batch.passage_texts.add(batch.texts.passage[row])


def _new_passage_row(batch: Batch, rows: np.ndarray, rng: np.random.Generator, tries: int = 20) -> int | None:
    """A uniform draw among `rows` whose passage text is not in the batch (None if there is none)."""
    if len(rows) == 0:
        return None
    for _ in range(tries):   # rejection: cheap while repeated texts are rare
        row = int(rows[rng.integers(len(rows))])
        if batch.is_new_passage(row):
            return row
    new = rows[np.fromiter((batch.is_new_passage(int(r)) for r in rows), dtype=bool, count=len(rows))]
    return int(new[rng.integers(len(new))]) if len(new) else None


def keep_group_fraction(pairs: pd.DataFrame, fraction: float, split: str = "train") -> pd.DataFrame:
    """The rows of ceil(fraction * n) groups of each source's `split` (row_id values kept).

    Groups are taken in the order of sha256(group_id): the subsets are nested across fractions and
    the same for every strategy and seed, so a data-size sweep compares like with like.
    """
    if not 0 < fraction <= 1:
        raise BadInput(f"group fraction {fraction} must be in (0, 1]")
    rows = pairs[pairs["split"] == split]
    keep: list[str] = []
    for _, part in rows.groupby("source", sort=True):
        groups = sorted(set(part["group_id"].tolist()),
                        key=lambda g: hashlib.sha256(g.encode("utf-8")).hexdigest())
        keep.extend(groups[:math.ceil(fraction * len(groups))])
    return rows[rows["group_id"].isin(set(keep))]


def keep_domain_queries(rows: pd.DataFrame, n: int | None) -> pd.DataFrame:
    """The rows of n groups of `rows` (None: all), in sha256(group_id) order: nested across n."""
    groups = sorted(set(rows["group_id"].tolist()), key=lambda g: hashlib.sha256(g.encode("utf-8")).hexdigest())
    return rows[rows["group_id"].isin(set(groups[:n]))]


@dataclass
class DomainPool:
    """The domain source's English groups, the share of batches they get, and each group's relevant
    passages (the passage text ids of all its rows)."""
    src: SourceIndex
    queue: EpochQueue
    share: float
    relevant: list[set[int]]


def domain_pool(rows: pd.DataFrame, n: int | None, split: str, langs: list[str] | None,
                batch_size: int, other_groups: int, texts: TextIds) -> DomainPool:
    index = index_sources(keep_domain_queries(rows, n), split, langs).get(DOMAIN_SOURCE)
    if index is None or "en" not in index.lang_groups:
        raise BadInput(f"--domain-queries: the pairs table has no English {DOMAIN_SOURCE} rows in split "
                       f"{split!r} (build it with `hybridir domain-data`; data.train_langs must hold en)")
    groups = index.lang_groups["en"]
    if len(groups) < batch_size:
        raise BadInput(f"--domain-queries: {len(groups)} domain queries < train.batch_size {batch_size}")
    relevant = [set(texts.passage[index.rows[(g, "en")]].tolist()) for g in range(index.size)]
    return DomainPool(index, EpochQueue(groups), len(groups) / (len(groups) + other_groups), relevant)


def _fill_domain(batch: Batch, pool: DomainPool, batch_size: int, rng: np.random.Generator) -> None:
    held: set[int] = set()   # passages relevant to a query already in the batch

    def accept(g: int) -> bool:
        row = _pick_row(pool.src.rows[(g, "en")], rng)
        if pool.relevant[g] & batch.passage_texts or batch.texts.passage[row] in held:
            return False
        if not batch.add(g, "en", "en", row, row):
            return False
        held.update(pool.relevant[g])
        return True

    pool.queue.take(batch_size, rng, accept)


def build_batches(pairs: pd.DataFrame, *, strategy: str, alpha: float | None, batch_size: int, steps: int,
                  seed: int, split: str = "train", langs: list[str] | None = None,
                  extra_negatives: int = 0, group_fraction: float = 1.0, domain_queries: int | None = 0,
                  bitext_share: float = 0.0, log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """The batch table: one row per triplet, `steps` batches of `batch_size`, batch_id 0..steps-1.

    `group_fraction` < 1 draws from only that share of each source's groups (keep_group_fraction).
    `domain_queries` (None: all) mixes in that many domain groups (module docstring); 0: none.
    `bitext_share` > 0 makes that share of the batches translation-ranking batches (module docstring).
    """
    if strategy not in STRATEGIES:
        raise BadInput(f"strategy {strategy!r} unknown; allowed: {', '.join(STRATEGIES)}")
    if strategy == "hybrid" and not (alpha is not None and 0.0 <= alpha <= 1.0):
        raise BadInput(f"train.alpha = {alpha} must be in [0, 1]")
    if batch_size < 2 or steps < 1:
        raise BadInput(f"train.batch_size = {batch_size} must be >= 2 and train.steps = {steps} >= 1")
    if extra_negatives not in (0, 1):
        raise BadInput(f"train.extra_negatives = {extra_negatives} must be 0 or 1")
    if not 0.0 <= bitext_share < 1.0:
        raise BadInput(f"train.bitext_share = {bitext_share} must be in [0, 1)")
    if bitext_share > 0 and extra_negatives:
        raise BadInput("train.bitext_share > 0 needs train.extra_negatives: 0 (a bitext batch has no "
                       "passage-language extra negative)")
    check_pairs(pairs)
    texts = TextIds.of(pairs)   # of every row: row ids index it (row_id = row index)
    is_domain = pairs["source"] == DOMAIN_SOURCE
    domain_rows = pairs[is_domain]
    if is_domain.any():
        pairs = pairs[~is_domain]
    if group_fraction < 1:
        pairs = keep_group_fraction(pairs, group_fraction, split)
    index = index_sources(pairs, split, langs)
    if not index:
        raise BadInput(f"the pairs table has no rows with split == {split!r}"
                       + (f" in languages {langs}" if langs else ""))
    pools = build_pools(index, batch_size)
    for line in pools.left_out:
        (log or _stderr)(f"batches: left out {line}")

    eligible = {"xx_mono": sorted(pools.xx), "xy": sorted(pools.xy)}
    needed = {"xx_mono": strategy in ("xx_mono", "hybrid") and (strategy == "xx_mono" or alpha > 0),
              "xy": strategy in ("xy", "hybrid") and (strategy == "xy" or alpha < 1) or bitext_share > 0}
    for kind, need in needed.items():
        if need and not eligible[kind]:
            sizes = {n: s.size for n, s in index.items()}
            raise BadInput(
                f"no source can give a {kind} batch of {batch_size} distinct groups from split "
                f"{split!r} (groups per source: {sizes}); lower train.batch_size or add data"
                + (" with at least two languages per group" if kind == "xy" else ""))
    weights = {kind: np.array([index[s].size for s in names], dtype=np.float64)
               for kind, names in eligible.items()}
    domain = (domain_pool(domain_rows, domain_queries, split, langs, batch_size,
                          sum(s.size for s in index.values()), texts) if domain_queries != 0 else None)

    rng = np.random.Generator(np.random.PCG64(seed))
    if domain is not None:
        domain_steps = np.random.Generator(np.random.PCG64([seed, 1])).random(steps) < domain.share
    bitext_steps = np.random.Generator(np.random.PCG64([seed, 2])).random(steps) < bitext_share
    cols: dict[str, list[Any]] = {f.name: [] for f in BATCH_SCHEMA}
    negs: list[int] = []
    for b in range(steps):
        u = rng.random()   # drawn for every strategy: see step 1 of the module docstring
        kind = strategy if strategy != "hybrid" else ("xx_mono" if u < alpha else "xy")
        batch = Batch(texts)
        if domain is not None and domain_steps[b]:
            kind, source, src = "xx_mono", DOMAIN_SOURCE, domain.src
            _fill_domain(batch, domain, batch_size, rng)
        elif bitext_steps[b]:
            kind, batch.bitext = "bitext", True
            names, w = eligible["xy"], weights["xy"]
            source = names[int(rng.choice(len(names), p=w / w.sum()))]
            src = index[source]
            # the X-Y draws; batch.bitext makes each candidate the translation's query text
            pools.xy[source].take(batch_size, rng, lambda g: _add_xy(batch, src, g, rng))
        else:
            names = eligible[kind]
            w = weights[kind]
            source = names[int(rng.choice(len(names), p=w / w.sum()))]
            src = index[source]
            if kind == "xx_mono":
                lang_names = sorted(pools.xx[source])
                lang = lang_names[int(rng.integers(len(lang_names)))]
                pools.xx[source][lang].take(batch_size, rng, lambda g: _add_xx(batch, src, g, lang, rng))
            else:
                pools.xy[source].take(batch_size, rng, lambda g: _add_xy(batch, src, g, rng))
        if extra_negatives:
            _add_negatives(batch, src, rng)
            negs.extend(batch.negatives)
        cols["batch_id"].extend([b] * batch_size)
        cols["batch_type"].extend([kind] * batch_size)
        cols["source"].extend([source] * batch_size)
        cols["group_id"].extend(src.group_ids[g] for g in batch.groups)
        cols["query_lang"].extend(batch.qlangs)
        cols["passage_lang"].extend(batch.plangs)
        cols["query_row"].extend(batch.qrows)
        cols["passage_row"].extend(batch.prows)
    table = pd.DataFrame({f.name: pd.array(cols[f.name], dtype="int64" if f.type == pa.int64() else object)
                          for f in BATCH_SCHEMA})
    if extra_negatives:
        table["negative_row"] = np.asarray(negs, dtype=np.int64)
    return table


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


# ---------------------------------------------------------------- file I/O


def write_batches(table: pd.DataFrame, path: str | Path, settings: dict[str, Any]) -> None:
    """Write deterministically (fixed schema, zstd, no pandas index) and atomically."""
    schema = BATCH_SCHEMA.append(NEGATIVE_FIELD) if "negative_row" in table.columns else BATCH_SCHEMA
    meta = {METADATA_KEY: json.dumps(settings, sort_keys=True).encode("utf-8")}
    arrays = [pa.array(table[f.name].tolist(), type=f.type) for f in schema]
    arrow = pa.Table.from_arrays(arrays, schema=schema.with_metadata(meta))
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp, compression="zstd", compression_level=3, use_dictionary=True,
                       write_statistics=True, row_group_size=1 << 20)


def read_batches(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The batch table and the settings it was built with (strategy, seed, ...)."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"batch table {path} not found (run `hybridir batches` first)")
    arrow = pq.read_table(path)
    meta = arrow.schema.metadata or {}
    if METADATA_KEY not in meta:
        raise BadInput(f"{path} has no {METADATA_KEY.decode()} metadata: not written by `hybridir batches`")
    missing = [f.name for f in BATCH_SCHEMA if f.name not in arrow.column_names]
    if missing:
        raise BadInput(f"batch table {path} lacks columns {missing}")
    return arrow.to_pandas(), json.loads(meta[METADATA_KEY])


def summarize(table: pd.DataFrame) -> str:
    per_batch = table.drop_duplicates("batch_id")
    kinds = per_batch["batch_type"].value_counts().sort_index().to_dict()
    sources = per_batch["source"].value_counts().sort_index().to_dict()
    return f"{per_batch.shape[0]} batches; types {kinds}; sources {sources}"


def _run(args: argparse.Namespace) -> int:
    params = args.params
    tp = params["train"]
    # train.alpha shapes hybrid batches only: the pure strategies neither read nor record it.
    alpha = args.alpha if args.alpha is not None else float(tp["alpha"]) if args.strategy == "hybrid" else None
    pairs = read_pairs(args.pairs)
    langs = params["data"].get("train_langs")
    bitext_share = float(tp["bitext_share"])
    table = build_batches(pairs, strategy=args.strategy, alpha=alpha, batch_size=int(tp["batch_size"]),
                          steps=int(tp["steps"]), seed=args.seed, split="train", langs=langs,
                          extra_negatives=int(tp["extra_negatives"]), group_fraction=args.group_fraction,
                          domain_queries=args.domain_queries, bitext_share=bitext_share)
    settings = {"strategy": args.strategy, "seed": args.seed, "alpha": alpha,
                "batch_size": int(tp["batch_size"]), "steps": int(tp["steps"]),
                "extra_negatives": int(tp["extra_negatives"]), "group_fraction": args.group_fraction,
                "langs": langs, "pairs_fingerprint": pairs_fingerprint(pairs)}
    # recorded only when used: the other tables stay byte-identical
    if args.domain_queries != 0:
        settings["domain_queries"] = "all" if args.domain_queries is None else args.domain_queries
    if bitext_share > 0:
        settings["bitext_share"] = bitext_share
    write_batches(table, args.out, settings)
    _stderr(f"batches: {args.out}: {summarize(table)}")
    return 0


def domain_size(text: str) -> int | None:
    """A domain size as commands and tags write it: an integer >= 0, or `all` (None)."""
    if text == "all":
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is neither an integer >= 0 nor 'all'")
    return int(text)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("batches", help="build the training batch table for one strategy and seed")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--pairs", default="data/train/pairs.parquet")
    p.add_argument("--strategy", required=True, choices=STRATEGIES)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--alpha", type=float, default=None, help="override train.alpha (hybrid alpha sweep)")
    p.add_argument("--group-fraction", type=float, default=1.0,
                   help="use this share (0, 1] of each source's training groups (data-size sweep)")
    p.add_argument("--domain-queries", type=domain_size, default=0,
                   help="mix in this many domain groups (NFCorpus train queries; `all`) from the "
                        "domain-data pairs table (domain-size sweep); default 0: none")
    p.add_argument("--recipe", default=None,
                   help="use experiments.recipes.<RECIPE>'s train settings in place of train's (recipe study)")
    p.add_argument("--out", required=True, help="output parquet, e.g. data/batches/hybrid-s0.parquet")
    p.set_defaults(func=_run)
