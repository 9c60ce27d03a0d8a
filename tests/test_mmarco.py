"""mMARCO loading with `datasets` on a tiny local copy laid out like the hub repository."""
from __future__ import annotations

from pathlib import Path

import pytest

from hybridir.data.batches import build_batches
from hybridir.data.mmarco import TRIPLES, collection_file, mmarco_pairs, queries_file

TRIPLE_ROWS = ["10\t100\t900", "10\t101\t901", "11\t102\t902", "12\t103\t903", "13\t104\t904", "14\t105\t905"]
QUERIES = {
    "en": {"10": "what fruit is native to australia", "11": 'define "NA" in statistics',
           "12": "how long to boil an egg", "13": "capital of peru", "14": "who wrote hamlet"},
    "de": {"10": "welche frucht stammt aus australien", "11": 'definiere "NA" in der statistik',
           "13": "hauptstadt von peru", "14": "wer schrieb hamlet"},   # 12 untranslated
}
PASSAGES = {
    "en": {"100": "Passiflora herbertiana is a rare passion fruit native to Australia.",
           "101": "A second positive that must be ignored.", "102": "NA means not available.",
           "103": "Boil an egg for nine minutes.", "104": "Lima is the capital of Peru.",
           "105": "Hamlet was written by Shakespeare.", "900": "An unrelated negative."},
    "de": {"100": "Passiflora herbertiana ist eine seltene Passionsfrucht aus Australien.",
           "101": "Ein zweites Positiv.", "102": "NA bedeutet nicht verfügbar.",
           "103": "Ein Ei neun Minuten kochen.", "104": "Lima ist die Hauptstadt von Peru.",
           "105": "Hamlet wurde von Shakespeare geschrieben."},
}


def write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    write(tmp_path / TRIPLES, TRIPLE_ROWS)
    for lang in ("en", "de"):
        write(tmp_path / queries_file(lang), [f"{k}\t{v}" for k, v in QUERIES[lang].items()])
        write(tmp_path / collection_file(lang), [f"{k}\t{v}" for k, v in PASSAGES[lang].items()])
    return tmp_path


def test_pairs_schema_and_content(root: Path) -> None:
    pairs = mmarco_pairs(["en", "de"], root=root, max_queries=4, valid_fraction=0.25, seed=0)
    assert list(pairs.columns) == ["row_id", "source", "group_id", "lang", "query", "passage", "split"]
    assert pairs["row_id"].tolist() == list(range(len(pairs)))
    assert set(pairs["source"]) == {"mmarco"}
    # the first 4 distinct query ids; translations share the group id; 12 has no German query
    assert pairs["group_id"].drop_duplicates().tolist() == ["mmarco/10", "mmarco/11", "mmarco/12", "mmarco/13"]
    assert pairs.groupby("group_id")["lang"].apply(list).to_dict() == {
        "mmarco/10": ["en", "de"], "mmarco/11": ["en", "de"], "mmarco/12": ["en"], "mmarco/13": ["en", "de"]}
    row = pairs[(pairs["group_id"] == "mmarco/10") & (pairs["lang"] == "de")].iloc[0]
    assert row["query"] == QUERIES["de"]["10"] and row["passage"] == PASSAGES["de"]["100"]  # first positive
    quoted = pairs[(pairs["group_id"] == "mmarco/11") & (pairs["lang"] == "en")].iloc[0]
    assert quoted["query"] == 'define "NA" in statistics' and quoted["passage"] == "NA means not available."
    # split by group: one of four queries is in valid, wholly
    assert pairs.groupby("group_id")["split"].nunique().max() == 1
    assert (pairs.drop_duplicates("group_id")["split"] == "valid").sum() == 1
    again = mmarco_pairs(["en", "de"], root=root, max_queries=4, valid_fraction=0.25, seed=0)
    assert again.equals(pairs)


def test_all_queries_and_batches(root: Path) -> None:
    pairs = mmarco_pairs(["en", "de"], root=root, max_queries=None, valid_fraction=0.0, seed=0)
    assert pairs["group_id"].nunique() == 5 and (pairs["split"] == "train").all()
    batches = build_batches(pairs, strategy="xy", alpha=0.5, batch_size=2, steps=4, seed=0)
    assert (batches["query_lang"] != batches["passage_lang"]).all()


def test_unknown_language(root: Path) -> None:
    with pytest.raises(ValueError, match="no language"):
        mmarco_pairs(["xx"], root=root, max_queries=2, valid_fraction=0.0, seed=0)


def test_paper_profile_matches_params_schema(repo: Path) -> None:
    import yaml

    from hybridir.pipeline.config import ConfigError, validate

    paper = yaml.safe_load((repo / "config" / "paper.yaml").read_text(encoding="utf-8"))
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    assert list(paper) == list(params), "config/paper.yaml must have params.yaml's sections, in order"
    for section in params:
        assert list(paper[section]) == list(params[section]), f"keys of section {section} differ from params.yaml"
    assert paper["train"]["batch_size"] == 100 and paper["train"]["lr"] == 3e-5
    assert paper["encoder"]["hub_id"] == "xlm-roberta-base"
    try:
        validate(paper, "config/paper.yaml")
    except ConfigError as exc:
        rest = [line for line in str(exc).splitlines()[1:] if "'mmarco' is not one of" not in line]
        if rest:
            raise
        pytest.skip("data.train_sources does not accept mmarco yet (the train-data stage must add it)")
