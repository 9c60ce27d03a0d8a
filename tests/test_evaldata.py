"""XQuAD-R / MLQA-R tables: LAReQA's published counts, qrels integrity, subsampling, bad input."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from hybridir import cli

from hybridir.data import evaldata
from hybridir.data.sources import find, load_registry

REPO = Path(__file__).resolve().parents[1]

# LAReQA's README table (questions, candidates per language).
XQUAD_CANDIDATES = {"ar": 1222, "de": 1276, "el": 1234, "en": 1180, "es": 1215, "hi": 1244,
                    "ru": 1219, "th": 852, "tr": 1167, "vi": 1209, "zh": 1196}
MLQA_COUNTS = {"ar": (517, 2545), "de": (512, 2362), "en": (1148, 6264), "es": (500, 1787),
               "hi": (507, 2426), "vi": (511, 2828), "zh": (504, 2322)}


@pytest.fixture(scope="module")
def xquad(mirror: Path) -> evaldata.EvalTables:
    return evaldata.build_dataset(mirror, "xquad_r")


@pytest.fixture(scope="module")
def mlqa(mirror: Path) -> evaldata.EvalTables:
    return evaldata.build_dataset(mirror, "mlqa_r")


def test_xquad_counts_match_lareqa(xquad):
    assert xquad.queries.groupby("lang").size().to_dict() == {lang: 1190 for lang in XQUAD_CANDIDATES}
    assert xquad.candidates.groupby("lang").size().to_dict() == XQUAD_CANDIDATES


def test_mlqa_counts_match_lareqa(mlqa):
    assert mlqa.queries.groupby("lang").size().to_dict() == {k: q for k, (q, _) in MLQA_COUNTS.items()}
    assert mlqa.candidates.groupby("lang").size().to_dict() == {k: c for k, (_, c) in MLQA_COUNTS.items()}


@pytest.mark.parametrize("name", ["xquad", "mlqa"])
def test_tables_follow_the_contract(name, request):
    t: evaldata.EvalTables = request.getfixturevalue(name)
    assert list(t.queries.columns) == ["lang", "qid", "text"]
    assert list(t.candidates.columns) == ["lang", "cid", "text", "context_id"]
    assert list(t.qrels.columns) == ["qid", "lang", "cid"]
    assert t.candidates["cid"].is_unique
    assert not t.queries.duplicated(["lang", "qid"]).any()
    assert not t.qrels.duplicated(["qid", "lang"]).any()  # one answer sentence per question and language
    assert (t.queries["text"].str.len() > 0).all() and (t.candidates["text"].str.len() > 0).all()
    assert (t.candidates["cid"].str.split("/").str[0] == t.candidates["lang"]).all()


@pytest.mark.parametrize("name", ["xquad", "mlqa"])
def test_qrels_integrity(name, request):
    t: evaldata.EvalTables = request.getfixturevalue(name)
    cand_lang = t.candidates.set_index("cid")["lang"]
    assert t.qrels["cid"].isin(cand_lang.index).all()
    assert (cand_lang.loc[t.qrels["cid"]].to_numpy() == t.qrels["lang"].to_numpy()).all()
    # every query has a relevant candidate in its own language, and the qrels languages of a question
    # are exactly the languages it is asked in
    query_langs = t.queries.groupby("qid")["lang"].apply(frozenset)
    qrel_langs = t.qrels.groupby("qid")["lang"].apply(frozenset)
    assert query_langs.to_dict() == qrel_langs.to_dict()


def test_xquad_every_question_relevant_in_all_11_languages(xquad):
    per_qid = xquad.qrels.groupby("qid")["lang"].nunique()
    assert len(per_qid) == 1190 and (per_qid == 11).all()


def test_mlqa_questions_are_parallel_across_two_to_four_languages(mlqa):
    per_qid = mlqa.queries.groupby("qid")["lang"].nunique()
    assert per_qid.min() == 2 and per_qid.max() == 4
    assert per_qid.value_counts().to_dict() == {4: 820, 3: 263, 2: 65}
    # English holds every MLQA question: ids really match across the language files
    assert set(mlqa.queries.loc[mlqa.queries["lang"] == "en", "qid"]) == set(mlqa.queries["qid"])


def test_relevant_sentence_holds_the_answer(mirror):
    """The qrels sentence of the first English question is the one that contains its answer text."""
    t = evaldata.build_dataset(mirror, "xquad_r", eval_langs=["en"])
    first = t.qrels.iloc[0]
    text = t.candidates.set_index("cid").loc[first["cid"], "text"]
    assert "308" in text  # "How many points did the Panthers defense surrender?" -> 308


def test_lang_restriction_and_subsample_keep_pools_whole(mirror):
    t = evaldata.build_dataset(mirror, "mlqa_r", eval_langs=["en", "de", "th"], max_queries_per_lang=25, seed=3)
    assert sorted(set(t.candidates["lang"])) == ["de", "en"]
    assert t.candidates.groupby("lang").size().to_dict() == {"de": 2362, "en": 6264}
    assert t.queries.groupby("lang").size().to_dict() == {"de": 25, "en": 25}
    assert set(t.qrels["qid"]) == set(t.queries["qid"]) and set(t.qrels["lang"]) <= {"de", "en"}
    again = evaldata.build_dataset(mirror, "mlqa_r", eval_langs=["en", "de"], max_queries_per_lang=25, seed=3)
    assert again.queries.equals(t.queries)
    x = evaldata.build_dataset(mirror, "xquad_r", eval_langs=["el", "vi"], max_queries_per_lang=10)
    by_lang = x.queries.groupby("lang")["qid"].apply(frozenset)
    assert by_lang["el"] == by_lang["vi"] and len(by_lang["el"]) == 10  # parallel questions stay together
    assert (x.qrels.groupby("qid").size() == 2).all()


def test_language_outside_dataset_is_an_error(mirror):
    with pytest.raises(ValueError, match="mlqa_r"):
        evaldata.build_dataset(mirror, "mlqa_r", eval_langs=["th"])


def _raw_copy(mirror: Path, tmp_path: Path, dataset_folder: str, lang: str) -> Path:
    src = find(load_registry(), f"/{dataset_folder}/{lang}.json")
    dest = tmp_path / "raw" / src.relpath
    dest.parent.mkdir(parents=True)
    shutil.copyfile(mirror / src.relpath, dest)
    return dest


def test_truncated_json_names_the_file(mirror, tmp_path):
    path = _raw_copy(mirror, tmp_path, "xquad-r", "en")
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"en\.json.*not valid JSON"):
        evaldata.build_dataset(tmp_path / "raw", "xquad_r", eval_langs=["en"])


def test_missing_language_file_names_the_file(mirror, tmp_path):
    _raw_copy(mirror, tmp_path, "xquad-r", "en")
    with pytest.raises(FileNotFoundError, match=r"xquad-r/de\.json"):
        evaldata.build_dataset(tmp_path / "raw", "xquad_r", eval_langs=["en", "de"])


def test_file_without_sentence_breaks_is_rejected(mirror, tmp_path):
    path = _raw_copy(mirror, tmp_path, "xquad-r", "en")
    path.write_text('{"data": [{"paragraphs": [{"context": "A b.", "qas": []}]}]}')
    with pytest.raises(ValueError, match="sentences"):
        evaldata.build_dataset(tmp_path / "raw", "xquad_r", eval_langs=["en"])


def _params(tmp_path: Path, **data) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _run_stage(*argv: str) -> int:
    """The eval-data subcommand through the real CLI (which loads only this stage's module)."""
    return cli.main(["eval-data", *argv])


def test_cli_writes_tables_and_stats(mirror, tmp_path):
    params = _params(tmp_path, eval_langs=["en", "de"], eval_max_queries_per_lang=20)
    out = tmp_path / "eval"
    assert _run_stage("--params", str(params), "--raw", str(mirror), "--out", str(out)) == 0
    for dataset in ("xquad_r", "mlqa_r"):
        for name in ("queries", "candidates", "qrels"):
            assert (out / dataset / f"{name}.parquet").is_file()
        stats = yaml.safe_load((out / dataset / "stats.json").read_text())
        assert stats["queries"] == {"de": 20, "en": 20}
    assert pd.read_parquet(out / "xquad_r" / "candidates.parquet").groupby("lang").size().to_dict() == \
        {"de": 1276, "en": 1180}


def test_cli_failure_leaves_no_output(mirror, tmp_path, capsys):
    params = _params(tmp_path, eval_langs=["en"])
    out = tmp_path / "eval"
    (out / "xquad_r").mkdir(parents=True)
    (out / "xquad_r" / "stats.json").write_text("{}")  # an earlier, complete output
    path = _raw_copy(mirror, tmp_path, "xquad-r", "en")
    path.write_bytes(b"{")
    assert _run_stage("--params", str(params), "--raw", str(tmp_path / "raw"), "--out", str(out)) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert [p.name for p in out.rglob("*")] == ["xquad_r", "stats.json"]  # untouched
    assert not list(tmp_path.glob(".eval.*"))  # no temporary left behind
