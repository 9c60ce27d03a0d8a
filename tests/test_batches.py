"""The batch table, checked on the written file: built from a real pairs table (mirror data)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from hybridir.data.batches import EpochQueue, build_batches, keep_group_fraction, read_batches
from hybridir.cli import main

from pairs_fixture import build_pairs

BATCH = 16


@pytest.fixture(scope="module")
def pairs(mirror: Path, repo: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The real pairs table from the train-data stage (capped for speed); the mirror fixture without it."""
    if importlib.util.find_spec("hybridir.data.traindata") is None:
        return build_pairs(mirror)
    from hybridir.data import traindata
    from hybridir.data.fetch import fetch_all
    from hybridir.data.sources import load_registry

    raw = tmp_path_factory.mktemp("raw")
    fetch_all(load_registry(), raw, mirror)
    data = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))["data"]
    table, _ = traindata.build_pairs(raw, data | {"max_groups_per_source": 500})
    return table


def multilingual_sources(pairs: pd.DataFrame) -> set[str]:
    train = pairs[pairs["split"] == "train"]
    n_langs = train.groupby(["source", "group_id"])["lang"].nunique()
    return {s for s, n in n_langs.groupby(level=0).max().items() if n >= 2}


@pytest.fixture(scope="module")
def pairs_file(pairs: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.parquet"
    pairs.to_parquet(path, index=False)
    return path


def params_file(repo: Path, directory: Path, **train: object) -> Path:
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    params["train"].update(train)
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


def run_batches(repo: Path, tmp: Path, pairs_file: Path, strategy: str, seed: int, name: str,
                **train: object) -> Path:
    out = tmp / f"{name}.parquet"
    settings = {"batch_size": BATCH, "steps": 300, "alpha": 0.5, "extra_negatives": 0} | train
    params = params_file(repo, tmp, **settings)
    rc = main(["batches", "--params", str(params), "--pairs", str(pairs_file), "--strategy", strategy,
               "--seed", str(seed), "--out", str(out)])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def written(repo: Path, pairs_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("batches")
    return {s: run_batches(repo, tmp, pairs_file, s, 0, s) for s in ("xx_mono", "xy", "hybrid")}


def joined(path: Path, pairs: pd.DataFrame) -> pd.DataFrame:
    table = pq.read_table(path).to_pandas()
    q = pairs.set_index("row_id").loc[table["query_row"]]
    p = pairs.set_index("row_id").loc[table["passage_row"]]
    table["q_group"], table["q_lang"], table["q_split"] = q["group_id"].values, q["lang"].values, q["split"].values
    table["p_group"], table["p_lang"], table["p_split"] = p["group_id"].values, p["lang"].values, p["split"].values
    table["q_source"] = q["source"].values
    return table


def test_schema_and_shape(written: dict[str, Path]) -> None:
    for strategy, path in written.items():
        schema = pq.read_schema(path)
        assert schema.names == ["batch_id", "batch_type", "source", "group_id", "query_lang", "passage_lang",
                                "query_row", "passage_row"]
        assert [str(schema.field(n).type) for n in schema.names] == [
            "int64", "string", "string", "string", "string", "string", "int64", "int64"]
        table = pq.read_table(path).to_pandas()
        assert list(table["batch_id"].unique()) == list(range(300))
        assert (table.groupby("batch_id").size() == BATCH).all()
        assert table.index.equals(pd.RangeIndex(len(table)))
        meta = json.loads(schema.metadata[b"hybridir.batches"])
        assert meta["strategy"] == strategy and meta["seed"] == 0 and meta["batch_size"] == BATCH


def test_rows_match_their_triplets(written: dict[str, Path], pairs: pd.DataFrame) -> None:
    for path in written.values():
        t = joined(path, pairs)
        assert (t["q_split"] == "train").all() and (t["p_split"] == "train").all()
        assert (t["q_group"] == t["group_id"]).all() and (t["p_group"] == t["group_id"]).all()
        assert (t["q_lang"] == t["query_lang"]).all() and (t["p_lang"] == t["passage_lang"]).all()
        assert (t["q_source"] == t["source"]).all()
        assert (t.groupby("batch_id")["group_id"].nunique() == BATCH).all(), "group ids repeat in a batch"
        assert (t.groupby("batch_id")["source"].nunique() == 1).all()


def assert_texts_unique(path: Path, pairs: pd.DataFrame) -> None:
    """On the written file: within a batch no query text repeats, and no passage text among the
    positives and extra negatives (a repeat would be a false in-batch negative)."""
    t = pq.read_table(path).to_pandas()
    by_row = pairs.set_index("row_id")
    queries = pd.DataFrame({"batch_id": t["batch_id"], "text": by_row.loc[t["query_row"], "query"].values})
    candidates = [t["passage_row"]] + ([t["negative_row"]] if "negative_row" in t.columns else [])
    passages = pd.DataFrame({"batch_id": np.concatenate([t["batch_id"]] * len(candidates)),
                             "text": by_row.loc[np.concatenate(candidates), "passage"].values})
    assert not queries.duplicated().any(), f"{path.name}: a query text repeats within a batch"
    assert not passages.duplicated().any(), f"{path.name}: a passage text repeats within a batch"


def test_texts_unique_within_a_batch(written: dict[str, Path], pairs: pd.DataFrame) -> None:
    train = pairs[pairs["split"] == "train"]
    # the fixture has the case: ARCD questions on one paragraph are groups sharing a passage text
    assert (train.groupby(["source", "passage"])["group_id"].nunique() > 1).any()
    for path in written.values():
        assert_texts_unique(path, pairs)


def test_xx_mono_batches_are_one_language(written: dict[str, Path]) -> None:
    for strategy in ("xx_mono", "hybrid"):
        t = pq.read_table(written[strategy]).to_pandas()
        xx = t[t["batch_type"] == "xx_mono"]
        assert len(xx) > 0
        assert (xx["query_lang"] == xx["passage_lang"]).all()
        assert (xx.groupby("batch_id")["query_lang"].nunique() == 1).all()
        assert (xx["query_row"] == xx["passage_row"]).all()
    t = pq.read_table(written["xx_mono"]).to_pandas()
    assert set(t["batch_type"]) == {"xx_mono"}


def test_batch_language_uniform_over_the_source_languages(repo: Path, pairs_file: Path, pairs: pd.DataFrame,
                                                          tmp_path: Path) -> None:
    path = run_batches(repo, tmp_path, pairs_file, "xx_mono", 2, "langs", steps=1500)
    t = pq.read_table(path).to_pandas().drop_duplicates("batch_id")
    train = pairs[pairs["split"] == "train"]
    for source, part in t.groupby("source"):
        langs = set(train[train["source"] == source]["lang"])
        shares = part["query_lang"].value_counts(normalize=True)
        assert set(shares.index) == langs
        if len(part) >= 200:
            assert (abs(shares - 1 / len(langs)) < 0.1).all(), (source, shares.to_dict())


def test_xy_triplets_cross_languages(written: dict[str, Path], pairs: pd.DataFrame) -> None:
    for strategy in ("xy", "hybrid"):
        t = pq.read_table(written[strategy]).to_pandas()
        xy = t[t["batch_type"] == "xy"]
        assert len(xy) > 0
        assert (xy["query_lang"] != xy["passage_lang"]).all()
        assert set(xy["source"]) <= multilingual_sources(pairs), "a single-language source gives no X-Y"
        # positives and in-batch negatives span languages
        assert (xy.groupby("batch_id")["passage_lang"].nunique() > 1).all()
    assert set(pq.read_table(written["xy"]).to_pandas()["batch_type"]) == {"xy"}


def test_hybrid_proportion_close_to_alpha(repo: Path, pairs_file: Path, tmp_path: Path) -> None:
    for alpha in (0.5, 0.2):
        path = run_batches(repo, tmp_path, pairs_file, "hybrid", 1, f"a{alpha}", alpha=alpha, steps=600)
        kinds = pq.read_table(path).to_pandas().drop_duplicates("batch_id")["batch_type"]
        share = (kinds == "xx_mono").mean()
        assert abs(share - alpha) < 0.07, (alpha, share)   # binomial sd ~0.02


def test_source_proportional_to_group_count(written: dict[str, Path], pairs: pd.DataFrame) -> None:
    train = pairs[pairs["split"] == "train"]
    sizes = train.groupby("source")["group_id"].nunique()
    expected = sizes / sizes.sum()
    got = pq.read_table(written["xx_mono"]).to_pandas().drop_duplicates("batch_id")["source"] \
        .value_counts(normalize=True)
    for source, share in expected.items():
        assert abs(got.get(source, 0.0) - share) < 0.08, (source, got.get(source), share)
    # X-Y batches: only the multilingual sources, in proportion to their sizes
    multi = sizes[sorted(multilingual_sources(pairs))]
    got_xy = pq.read_table(written["xy"]).to_pandas().drop_duplicates("batch_id")["source"] \
        .value_counts(normalize=True)
    assert set(got_xy.index) == set(multi.index)
    for source, share in (multi / multi.sum()).items():
        assert abs(got_xy[source] - share) < 0.09, (source, got_xy[source], share)


def test_epochs_use_every_group_before_repeating(written: dict[str, Path], pairs: pd.DataFrame) -> None:
    t = pq.read_table(written["xx_mono"]).to_pandas()
    train = pairs[pairs["split"] == "train"]
    for (source, lang), part in t.groupby(["source", "query_lang"], sort=True):
        pool = set(train[(train["source"] == source) & (train["lang"] == lang)]["group_id"])
        seq = part.sort_values("batch_id", kind="stable")["group_id"].tolist()
        first = seq[:len(pool)]
        assert len(set(first)) == len(first), f"{source}/{lang} repeats a group within an epoch"
        if len(seq) >= len(pool):
            assert set(first) == pool


def test_epoch_queue_boundary() -> None:
    rng = np.random.Generator(np.random.PCG64(0))
    q = EpochQueue(np.arange(10))
    taken = [q.take(4, rng) for _ in range(10)]
    assert all(len(set(b)) == 4 for b in taken)
    flat = [g for b in taken for g in b]
    for epoch in range(4):
        assert sorted(flat[epoch * 10:(epoch + 1) * 10]) == list(range(10))


def test_epoch_queue_refused_groups_come_first_in_the_next_batch() -> None:
    rng = np.random.Generator(np.random.PCG64(0))
    q = EpochQueue(np.arange(10))
    refused: list[int] = []

    def accept(g: int) -> bool:   # e.g. a group whose text the batch already holds
        if g < 5:
            refused.append(g)
        return g >= 5

    assert sorted(q.take(5, rng, accept)) == [5, 6, 7, 8, 9]
    assert q.take(len(refused), rng) == refused
    with pytest.raises(ValueError, match="distinct query and passage texts"):
        EpochQueue(np.arange(10)).take(3, rng, lambda g: g < 2)


def test_same_seed_same_bytes_other_seed_differs(repo: Path, pairs_file: Path, written: dict[str, Path],
                                                 tmp_path: Path) -> None:
    again = run_batches(repo, tmp_path, pairs_file, "hybrid", 0, "again")
    assert again.read_bytes() == written["hybrid"].read_bytes()
    other = run_batches(repo, tmp_path, pairs_file, "hybrid", 1, "other")
    assert other.read_bytes() != written["hybrid"].read_bytes()
    a = pq.read_table(other).to_pandas()
    b = pq.read_table(written["hybrid"]).to_pandas()
    assert not a[["group_id", "query_row"]].equals(b[["group_id", "query_row"]])


def test_extra_negatives(repo: Path, pairs_file: Path, pairs: pd.DataFrame, tmp_path: Path) -> None:
    path = run_batches(repo, tmp_path, pairs_file, "hybrid", 0, "neg", extra_negatives=1, steps=50)
    assert str(pq.read_schema(path).field("negative_row").type) == "int64"
    t, meta = read_batches(path)
    assert meta["extra_negatives"] == 1
    assert_texts_unique(path, pairs)
    neg = pairs.set_index("row_id").loc[t["negative_row"]]
    assert (neg["lang"].values == t["passage_lang"].values).all()
    assert (neg["source"].values == t["source"].values).all()
    assert (neg["split"] == "train").all()
    t["neg_group"] = neg["group_id"].values
    for _, batch in t.groupby("batch_id"):
        assert not set(batch["neg_group"]) & set(batch["group_id"]), "a negative is a positive's translation"


def test_too_small_sources_fail_clearly(pairs: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="lower train.batch_size"):
        build_batches(pairs, strategy="xy", alpha=0.5, batch_size=50_000, steps=3, seed=0)
    # a source smaller than the batch is left out; the others still give batches
    train = pairs[pairs["split"] == "train"]
    small = sorted(train["source"].unique())[0]
    keep = set(sorted(train[train["source"] == small]["group_id"].unique())[:20])
    shrunk = pairs[(pairs["source"] != small) | pairs["group_id"].isin(keep)].reset_index(drop=True)
    shrunk["row_id"] = np.arange(len(shrunk))
    messages: list[str] = []
    t = build_batches(shrunk, strategy="xx_mono", alpha=0.5, batch_size=32, steps=60, seed=0, log=messages.append)
    assert small not in set(t["source"]) and len(set(t["source"])) >= 2
    assert any(m.startswith(f"batches: left out {small}") for m in messages)
    with pytest.raises(ValueError, match="strategy"):
        build_batches(pairs, strategy="mixed", alpha=0.5, batch_size=8, steps=3, seed=0)


def test_schema_rejects_bad_train_params(repo: Path, pairs_file: Path, tmp_path: Path) -> None:
    for bad in ({"alpha": 1.5}, {"batch_size": 1}, {"steps": 0}, {"precision": "fp16"},
                {"extra_negatives": 2}, {"unknown_key": 1}):
        params = params_file(repo, tmp_path, **bad)
        rc = main(["batches", "--params", str(params), "--pairs", str(pairs_file), "--strategy", "xy",
                   "--seed", "0", "--out", str(tmp_path / "x.parquet")])
        assert rc == 2, bad
        assert not (tmp_path / "x.parquet").exists()


def test_alpha_override_and_group_fraction(repo: Path, pairs_file: Path, pairs: pd.DataFrame,
                                           tmp_path: Path) -> None:
    params = params_file(repo, tmp_path, batch_size=BATCH, steps=400, alpha=0.5, extra_negatives=0)
    out = {}
    for name, extra in (("a1", ["--alpha", "1"]), ("f03", ["--group-fraction", "0.3"]),
                        ("f01", ["--group-fraction", "0.1"]), ("f03xy", ["--group-fraction", "0.3"])):
        strategy = "xy" if name == "f03xy" else "hybrid"
        out[name] = tmp_path / f"{name}.parquet"
        assert main(["batches", "--params", str(params), "--pairs", str(pairs_file), "--strategy", strategy,
                     "--seed", "0", *extra, "--out", str(out[name])]) == 0
    t, meta = read_batches(out["a1"])
    assert meta["alpha"] == 1.0 and set(t["batch_type"]) == {"xx_mono"}
    train = pairs[pairs["split"] == "train"]
    used = {}
    for name in ("f03", "f01", "f03xy"):
        t, meta = read_batches(out[name])
        used[name] = set(t["group_id"])
        assert meta["group_fraction"] in (0.3, 0.1)
    for source, part in train.groupby("source"):
        n = part["group_id"].nunique()
        assert len(used["f03"] & set(part["group_id"])) <= int(np.ceil(0.3 * n))
    # the same subset whatever the strategy, nested across fractions
    kept = set(keep_group_fraction(pairs, 0.3)["group_id"])
    kept_small = set(keep_group_fraction(pairs, 0.1)["group_id"])
    assert used["f03"] <= kept and used["f03xy"] <= kept and used["f01"] <= kept_small
    assert kept_small < kept


def test_hybrid_end_points_are_the_pure_strategies(pairs: pd.DataFrame) -> None:
    """The alpha sweep's end points reuse the X-X-mono and X-Y runs (pipeline.make_run): that is
    only right if hybrid at alpha 1 / 0 builds exactly their batches."""
    settings = dict(batch_size=BATCH, steps=60, seed=3)
    for alpha, pure in ((1.0, "xx_mono"), (0.0, "xy")):
        hybrid = build_batches(pairs, strategy="hybrid", alpha=alpha, **settings)
        pd.testing.assert_frame_equal(hybrid, build_batches(pairs, strategy=pure, alpha=0.5, **settings))
    mixed = build_batches(pairs, strategy="hybrid", alpha=0.5, **settings)
    assert set(mixed["batch_type"]) == {"xx_mono", "xy"}


def test_bitext_batches_on_the_written_file(repo: Path, pairs_file: Path, pairs: pd.DataFrame,
                                            written: dict[str, Path], tmp_path: Path) -> None:
    """train.bitext_share: translation-ranking batches at the same steps in every strategy; each pairs
    a sentence with its translation (same group, another language, both `query` texts), groups and
    both sides' texts unique within the batch, from parallel sources only; share 0 changes nothing."""
    share, steps = 0.3, 300
    tables = {s: read_batches(run_batches(repo, tmp_path, pairs_file, s, 0, f"bt-{s}", bitext_share=share))
              for s in ("xx_mono", "xy", "hybrid")}
    steps_of = {s: set(t.loc[t["batch_type"] == "bitext", "batch_id"]) for s, (t, _) in tables.items()}
    assert steps_of["xx_mono"] == steps_of["xy"] == steps_of["hybrid"]
    assert abs(len(steps_of["hybrid"]) / steps - share) < 0.08
    assert all(meta["bitext_share"] == share for _, meta in tables.values())
    by_row = pairs.set_index("row_id")
    parallel = multilingual_sources(pairs)
    for strategy, (t, _) in tables.items():
        assert set(t["batch_type"]) - {"bitext"} == ({"xx_mono", "xy"} if strategy == "hybrid" else {strategy})
        b = t[t["batch_type"] == "bitext"]
        q, p = by_row.loc[b["query_row"]], by_row.loc[b["passage_row"]]
        assert (q["group_id"].values == b["group_id"].values).all()
        assert (p["group_id"].values == b["group_id"].values).all()
        assert (q["lang"].values == b["query_lang"].values).all() and (p["lang"].values == b["passage_lang"].values).all()
        assert (b["query_lang"] != b["passage_lang"]).all()
        assert set(b["source"]) <= parallel and (q["split"] == "train").all() and (p["split"] == "train").all()
        sides = pd.DataFrame({"batch_id": b["batch_id"].values, "q": q["query"].values, "t": p["query"].values,
                              "g": b["group_id"].values})
        for col in ("q", "t", "g"):
            assert not sides.duplicated(["batch_id", col]).any(), (strategy, col)
    # share 0 is the old table, byte for byte (the setting is recorded only when used)
    again = run_batches(repo, tmp_path, pairs_file, "hybrid", 0, "bt0", bitext_share=0)
    assert again.read_bytes() == written["hybrid"].read_bytes()
    with pytest.raises(ValueError, match="extra_negatives"):
        build_batches(pairs, strategy="xy", alpha=0.5, batch_size=BATCH, steps=3, seed=0, extra_negatives=1,
                      bitext_share=0.5)
