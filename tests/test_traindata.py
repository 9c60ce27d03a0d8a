"""Training pairs: contract, complete groups, group/document-disjoint splits, held-out languages and
zero exact-string overlap with XQuAD-R / MLQA-R."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from hybridir import cli

from hybridir.data import traindata
from hybridir.pipeline.config import ConfigError, validate
from hybridir.data.sources import load_registry

REPO = Path(__file__).resolve().parents[1]


def _params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def _data(**changes) -> dict:
    data = dict(_params()["data"])
    data.update(changes)
    return data


def _run_stage(*argv: str) -> int:
    """The train-data subcommand through the real CLI (which loads only this stage's module)."""
    return cli.main(["train-data", *argv])


@pytest.fixture(scope="module")
def built(mirror: Path, tmp_path_factory) -> tuple[pd.DataFrame, Path, dict]:
    """The default build (params.yaml), written through the CLI stage."""
    tmp = tmp_path_factory.mktemp("train")
    params_path = tmp / "params.yaml"
    params_path.write_text(yaml.safe_dump(_params()))
    out = tmp / "train"
    assert _run_stage("--params", str(params_path), "--raw", str(mirror), "--out", str(out)) == 0
    return pd.read_parquet(out / "pairs.parquet"), out, _params()["data"]


@pytest.fixture(scope="module")
def eval_strings(mirror: Path) -> set[str]:
    """Every XQuAD-R / MLQA-R question and candidate sentence, read straight from the JSON files."""
    texts: set[str] = set()
    for src in load_registry():
        if src.role in ("eval:xquad-r", "eval:mlqa-r") and src.url.endswith(".json"):
            doc = json.loads((mirror / src.relpath).read_text(encoding="utf-8"))
            for article in doc["data"]:
                for para in article["paragraphs"]:
                    texts.update(s.strip() for s in para["sentences"])
                    texts.update(qa["question"].strip() for qa in para["qas"])
    assert len(texts) > 25_000  # 11 + 7 languages were read
    return texts


def test_schema_and_row_ids(built):
    pairs, _, _ = built
    assert list(pairs.columns)[:7] == ["row_id", "source", "group_id", "lang", "query", "passage", "split"]
    assert (pairs["row_id"].to_numpy() == range(len(pairs))).all()
    assert set(pairs["split"]) == {"train", "valid"}
    for col in ("query", "passage"):
        assert (pairs[col].str.strip().str.len() > 0).all()
    assert not pairs.duplicated(["group_id", "lang"]).any()


def test_sources_and_languages(built):
    pairs, _, data = built
    assert sorted(set(pairs["source"])) == sorted(data["train_sources"])
    assert not {"el", "vi"} & set(pairs["lang"])  # the held-out languages
    assert set(pairs["lang"]) == set(data["train_langs"])


def test_groups_are_complete_across_their_languages(built):
    pairs, _, data = built
    for source, part in pairs.groupby("source"):
        expected = frozenset(l for l in traindata.SOURCE_LANGS[source] if l in data["train_langs"])
        langs = part.groupby("group_id")["lang"].apply(frozenset)
        assert (langs == expected).all(), source
    assert pairs.groupby("group_id")["source"].nunique().max() == 1  # group ids unique across sources


def test_splits_are_disjoint_by_group_and_document(built):
    pairs, _, data = built
    assert pairs.groupby("group_id")["split"].nunique().max() == 1
    assert pairs.groupby("doc_id")["split"].nunique().max() == 1  # neighbours share sentences
    groups = pairs.drop_duplicates("group_id")
    for source, part in groups.groupby("source"):
        share = (part["split"] == "valid").mean()
        assert 0.5 * data["valid_fraction"] <= share <= data["valid_fraction"] + 1 / len(part), source  # rounding


def test_passages_are_neighbours_never_the_query(built):
    """Inverse cloze with context_sides=one, context_sentences=1: query and passage are the two units
    of a window; windows do not overlap, so no text is shared between groups of a document."""
    pairs, _, data = built
    assert (data["context_sides"], data["context_sentences"]) == ("one", 1)
    ict = pairs[pairs["source"] != "arcd"]
    assert (ict["query"] != ict["passage"]).all()
    for (doc, lang), part in ict[ict["source"] == "ntrex"].groupby(["doc_id", "lang"]):
        assert not set(part["passage"]) & set(part["query"]), (doc, lang)
    # translations: a group's passages differ per language (not copied English)
    sample = ict.groupby("group_id")["passage"].nunique()
    assert (sample > 1).mean() > 0.99


def test_zero_exact_overlap_with_evaluation_text(built, eval_strings):
    pairs, _, _ = built
    train: set[str] = set(pairs["query"].str.strip()) | set(pairs["passage"].str.strip())
    for passage in pairs["passage"]:  # and every sentence inside a (possibly joined) passage
        train.update(traindata.sentences_of(passage))
    assert not train & eval_strings
    normalised = {traindata.norm(t) for t in eval_strings}
    assert not {traindata.norm(t) for t in train} & normalised  # also after NFKC/case/space folding


def test_overlapping_units_are_filtered_and_counted(mirror, built):
    _, out, _ = built
    stats = json.loads((out / "stats.json").read_text())
    removed = stats["removed_for_eval_overlap"]
    assert set(removed) == {"wmt24pp", "ntrex", "tico19", "arcd"} and sum(removed.values()) > 0
    # on a real NTREX document: a unit equal to evaluation text goes in every language, context closes up
    doc = traindata.read_ntrex(mirror, ["en", "de"], load_registry())[0]
    forbidden = {traindata.norm(doc.units[2]["de"])}
    (kept,), n = traindata.drop_overlapping_units([doc], forbidden)
    assert n == 1 and len(kept.units) == len(doc.units) - 1
    assert doc.units[2]["en"] not in [u["en"] for u in kept.units]


def test_counts_csv_matches_pairs(built):
    pairs, out, _ = built
    counts = pd.read_csv(out / "counts.csv")
    assert list(counts.columns) == ["source", "lang", "split", "n"]
    assert counts["n"].sum() == len(pairs)
    expected = pairs.groupby(["source", "lang", "split"]).size()
    assert counts.set_index(["source", "lang", "split"])["n"].sort_index().equals(expected.sort_index())


def test_cap_languages_and_determinism(mirror):
    data = _data(train_sources=["ntrex", "tico19"], train_langs=["en", "de"], max_groups_per_source=40,
                 context_sides="both", context_sentences=2, valid_fraction=0.1)
    pairs, _ = traindata.build_pairs(mirror, data)
    groups = pairs.drop_duplicates("group_id")
    assert groups.groupby("source").size().to_dict() == {"ntrex": 40, "tico19": 40}
    assert set(pairs.loc[pairs["source"] == "tico19", "lang"]) == {"en"}  # TICO-19 has no German
    assert set(pairs.loc[pairs["source"] == "ntrex", "lang"]) == {"en", "de"}
    again, _ = traindata.build_pairs(mirror, data)
    assert again.equals(pairs)


def test_source_without_train_language_is_an_error(mirror):
    with pytest.raises(ValueError, match="arcd"):
        traindata.build_pairs(mirror, _data(train_sources=["arcd"], train_langs=["de", "en"]))


def test_sources_without_real_pairs_are_rejected_by_the_schema():
    params = _params()
    params["data"]["train_sources"] = ["ntrex", "tatoeba"]
    with pytest.raises(ConfigError, match="train_sources"):
        validate(params)


def test_missing_raw_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="DOCUMENT_IDS.tsv"):
        traindata.read_ntrex(tmp_path, ["en"], load_registry())
