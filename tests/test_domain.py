"""Domain data: NFCorpus train pairs (domain.py) and how batches mix them in (--domain-queries)."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from hybridir.data.batches import DOMAIN_SOURCE, build_batches, keep_domain_queries, read_batches
from hybridir.evaluate.beir import beir_zip, read_beir
from hybridir.cli import TRACE_ENV, main
from hybridir.data.domain import passage_of
from hybridir.pipeline.stages import stages
from hybridir.data.traindata import norm

from pairs_fixture import build_pairs
from pipeline_helpers import smoke_params
from test_batches import params_file

BATCH = 16


@pytest.fixture(scope="module")
def built(mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("domain")
    main_pairs = tmp / "pairs.parquet"
    build_pairs(mirror).assign(doc_id=lambda d: d["group_id"]).to_parquet(main_pairs, index=False)
    assert main(["domain-data", "--raw", str(mirror), "--pairs", str(main_pairs), "--out", str(tmp / "out")]) == 0
    return {"main": main_pairs, "combined": tmp / "out" / "pairs.parquet"}


@pytest.fixture(scope="module")
def combined(built: dict[str, Path]) -> pd.DataFrame:
    return pd.read_parquet(built["combined"])


def domain_rows(pairs: pd.DataFrame) -> pd.DataFrame:
    return pairs[pairs["source"] == DOMAIN_SOURCE]


def test_no_nfcorpus_test_query_or_test_relevant_document_in_training(combined: pd.DataFrame,
                                                                       mirror: Path) -> None:
    zip_path = beir_zip(mirror, "nfcorpus")
    test, train = read_beir(zip_path, "test"), read_beir(zip_path, "train")
    rows = domain_rows(combined)
    assert len(rows) > 1000
    doc_ids = set(rows["doc_id"].str.removeprefix(f"{DOMAIN_SOURCE}:"))
    qids = set(rows["group_id"].str.removeprefix(f"{DOMAIN_SOURCE}:"))
    test_docs = set(test.qrels["doc_id"])
    assert not doc_ids & test_docs
    assert qids <= set(train.qrels["qid"])           # train queries only: no test, no dev query
    test_passages = {norm(passage_of(t)) for t in test.corpus[test.corpus["doc_id"].isin(test_docs)]["text"]}
    assert not set(rows["passage"].map(norm)) & test_passages
    assert not set(rows["query"].map(norm)) & {norm(t) for t in test.queries["text"]}
    # each row is a train qrel: the passage is its document's, cut to a passage
    passages = dict(zip(train.corpus["doc_id"], train.corpus["text"].map(passage_of)))
    assert (rows["passage"] == rows["doc_id"].str.removeprefix(f"{DOMAIN_SOURCE}:").map(passages)).all()
    assert rows["passage"].str.split().str.len().max() <= 100


def test_main_rows_kept_and_domain_rows_appended(combined: pd.DataFrame, built: dict[str, Path]) -> None:
    main_pairs = pd.read_parquet(built["main"])
    pd.testing.assert_frame_equal(combined.iloc[:len(main_pairs)], main_pairs)
    assert np.array_equal(combined["row_id"].to_numpy(), np.arange(len(combined)))
    rows = domain_rows(combined)
    assert set(rows["lang"]) == {"en"} and set(rows["split"]) == {"train"}   # validation stays parallel
    assert rows.groupby("group_id")["query"].nunique().max() == 1          # a group is one query


LANGS = ["ar", "de", "en", "es", "hi", "ru", "th", "tr", "zh"]


def batches(pairs: pd.DataFrame, strategy: str, domain: int | None, **kw: object) -> pd.DataFrame:
    return build_batches(pairs, strategy=strategy, alpha=0.5, batch_size=BATCH, steps=200, seed=0,
                         langs=LANGS, domain_queries=domain, log=lambda m: None, **kw)


def test_no_domain_queries_gives_the_main_batches(combined: pd.DataFrame, built: dict[str, Path]) -> None:
    main_pairs = pd.read_parquet(built["main"])
    pd.testing.assert_frame_equal(batches(combined, "hybrid", 0), batches(main_pairs, "hybrid", 0))


@pytest.mark.parametrize("strategy", ["xx_mono", "xy", "hybrid"])
def test_domain_batches_in_every_strategy(combined: pd.DataFrame, strategy: str) -> None:
    table = batches(combined, strategy, 200)
    dom = table[table["source"] == DOMAIN_SOURCE]
    assert dom["group_id"].nunique() <= 200
    assert set(dom["batch_type"]) == {"xx_mono"}
    assert set(dom["query_lang"]) == set(dom["passage_lang"]) == {"en"}
    other = table[table["source"] != DOMAIN_SOURCE]
    parallel = combined[(combined["source"] != DOMAIN_SOURCE) & (combined["split"] == "train")
                        & combined["lang"].isin(LANGS)]
    share = 200 / (200 + parallel["group_id"].nunique())   # the sources' proportion to group counts
    assert abs(dom["batch_id"].nunique() / 200 - share) < 0.08
    if strategy == "xy":
        assert set(other["batch_type"]) == {"xy"}


def test_same_domain_steps_in_every_strategy(combined: pd.DataFrame) -> None:
    steps = {s: set(t.loc[t["source"] == DOMAIN_SOURCE, "batch_id"])
             for s in ("xx_mono", "xy", "hybrid") for t in [batches(combined, s, 200)]}
    assert steps["xx_mono"] == steps["xy"] == steps["hybrid"] and steps["xy"]


def test_domain_batches_hold_no_relevant_passage_of_another_query(combined: pd.DataFrame) -> None:
    table = batches(combined, "xx_mono", None, extra_negatives=0)
    rows = domain_rows(combined)
    relevant = rows.groupby("group_id")["passage"].agg(set).to_dict()
    passage = combined["passage"].to_numpy()
    for _, batch in table[table["source"] == DOMAIN_SOURCE].groupby("batch_id"):
        texts = [passage[r] for r in batch["passage_row"]]
        for group, text in zip(batch["group_id"], texts):
            assert sum(t in relevant[group] for t in texts) == 1, group


def test_domain_sizes_are_nested(combined: pd.DataFrame) -> None:
    rows = domain_rows(combined)
    small, large = (set(keep_domain_queries(rows, n)["group_id"]) for n in (100, 300))
    assert len(small) == 100 and small < large
    assert set(keep_domain_queries(rows, None)["group_id"]) == set(rows["group_id"])


def test_cli_domain_queries(repo: Path, built: dict[str, Path], tmp_path: Path) -> None:
    params = params_file(repo, tmp_path, batch_size=BATCH, steps=50)
    out = tmp_path / "b.parquet"
    assert main(["batches", "--params", str(params), "--pairs", str(built["combined"]), "--strategy", "xy",
                 "--seed", "0", "--domain-queries", "all", "--out", str(out)]) == 0
    table, settings = read_batches(out)
    assert settings["domain_queries"] == "all" and (table["source"] == DOMAIN_SOURCE).any()
    with pytest.raises(SystemExit):
        main(["batches", "--params", str(params), "--pairs", str(built["combined"]), "--strategy", "xy",
              "--seed", "0", "--domain-queries", "-1", "--out", str(out)])


def test_domain_stages_read_exactly_their_declared_params(repo: Path, mirror: Path, built: dict[str, Path],
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stages a domain-size sweep adds (domain-data; batches --domain-queries) read exactly the params
    their stage declares: the smoke runs, where test_repro checks every other stage, have no domain runs."""
    params = smoke_params(repo)
    params["experiments"]["domain_sizes"] = [0, 100]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    (tmp_path / "data" / "train").mkdir(parents=True)
    (tmp_path / "data" / "raw").symlink_to(mirror, target_is_directory=True)
    (tmp_path / "data" / "train" / "pairs.parquet").symlink_to(built["main"])
    table = stages(params)
    added = [s for s in table if s.name == "domain_data"] + \
        [s for s in table if "--domain-queries" in s.cmd][:1]   # the batches stages differ only in strategy
    assert [s.cmd.split()[1] for s in added] == ["domain-data", "batches"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(TRACE_ENV, str(tmp_path / "trace"))
    for stage in added:
        argv = shlex.split(stage.cmd)[1:]
        assert main(argv) == 0, stage.name
        traced = [json.loads(p.read_text()) for p in (tmp_path / "trace").glob("*.json")]
        reads = next(t["params"] for t in traced if t["argv"] == argv)
        assert set(reads) == set(stage.params), stage.name
