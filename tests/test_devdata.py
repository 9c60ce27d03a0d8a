"""The dev benchmark: held-out training documents as evaluation tables, scored like XQuAD-R / MLQA-R,
free of evaluation text, and one more evaluation dataset in the stage table."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from hybridir.data import devdata, evaldata, traindata
from hybridir.evaluate import metrics as M
from hybridir.cli import main
from hybridir.evaluate.encode import Embeddings
from hybridir.errors import CannotRun
from hybridir.evaluate.scoring import check_tables, evaluate, load_eval_tables
from hybridir.pipeline.stages import render_dvc_yaml, runs, stages


def _pairs() -> pd.DataFrame:
    """Two parallel groups held out (de, en), one trained on, and a held-out Arabic QA item."""
    rows = [("ntrex", "ntrex:d1:0", "de", "Frage eins.", "Passage eins.", "valid", "ntrex:d1"),
            ("ntrex", "ntrex:d1:0", "en", "Query one.", "Passage one.", "valid", "ntrex:d1"),
            ("ntrex", "ntrex:d1:2", "de", "Frage zwei.", "Passage zwei.", "valid", "ntrex:d1"),
            ("ntrex", "ntrex:d1:2", "en", "Query two.", "Passage two.", "valid", "ntrex:d1"),
            ("ntrex", "ntrex:d2:0", "de", "Training.", "Training passage.", "train", "ntrex:d2"),
            ("ntrex", "ntrex:d2:0", "en", "Training.", "Training passage.", "train", "ntrex:d2"),
            ("arcd", "arcd:1", "ar", "سؤال؟", "جواب.", "valid", "arcd:p0001")]
    pairs = pd.DataFrame(rows, columns=["source", "group_id", "lang", "query", "passage", "split", "doc_id"])
    pairs.insert(0, "row_id", np.arange(len(pairs)))
    return pairs


def test_tables_hold_the_held_out_parallel_groups() -> None:
    t = devdata.dev_tables(_pairs())
    check_tables(t)
    assert set(t.queries["qid"]) == {"ntrex:d1:0", "ntrex:d1:2"}       # no train row, no single-language QA
    assert sorted(t.candidates["text"]) == ["Passage eins.", "Passage one.", "Passage two.", "Passage zwei."]
    # every query's relevant candidate in each language is its own group's passage there
    rel = t.qrels.merge(t.candidates, on=["lang", "cid"])
    assert dict(zip(rel["qid"] + "|" + rel["lang"], rel["text"])) == {
        "ntrex:d1:0|de": "Passage eins.", "ntrex:d1:0|en": "Passage one.",
        "ntrex:d1:2|de": "Passage zwei.", "ntrex:d1:2|en": "Passage two."}


def test_scored_with_the_evaluation_protocol() -> None:
    """evaluate.py's mono / cross / multi settings on the dev tables: a model embedding every text
    by its group scores 1 everywhere, with rank distance 0 (each query's 2 relevant at ranks 1, 2)."""
    t = devdata.dev_tables(_pairs())
    vec = {"ntrex:d1:0": [1.0, 0.0], "ntrex:d1:2": [0.0, 1.0]}
    q = np.array([vec[g] for g in t.queries["qid"]], dtype=np.float32)
    c = np.array([vec[g] for g in t.qrels.set_index("cid").loc[t.candidates["cid"], "qid"]], dtype=np.float32)
    emb = Embeddings(t.queries[["lang", "qid"]], q, t.candidates[["lang", "cid"]], c, {})
    per_query = evaluate(t, emb)
    assert set(per_query["setting"]) == {"mono", "cross", "multi"}
    summary = M.summarise(per_query, ["de", "en"])
    assert (summary["mo"], summary["cr"], summary["mul"]) == (1.0, 1.0, 1.0)
    assert summary["rank_distance"] == 1.0


def test_stage_writes_tables_without_evaluation_text(mirror: Path, repo: Path, tmp_path: Path) -> None:
    data = yaml.safe_load((repo / "params.yaml").read_text())["data"] | {
        "train_sources": ["ntrex", "tico19"], "train_langs": ["de", "en", "es"], "max_groups_per_source": 150,
        "valid_fraction": 0.2}
    pairs, _ = traindata.build_pairs(mirror, data)
    pairs.to_parquet(tmp_path / "pairs.parquet", index=False)
    out = tmp_path / "dev"
    assert main(["dev-data", "--pairs", str(tmp_path / "pairs.parquet"), "--raw", str(mirror),
                 "--out", str(out)]) == 0
    t = load_eval_tables(out)
    texts = pd.concat([pd.read_parquet(out / "queries.parquet")["text"],
                       pd.read_parquet(out / "candidates.parquet")["text"]])
    assert len(t.queries) > 20 and set(t.queries["lang"]) == {"de", "en", "es"}
    valid = pairs[pairs["split"] == "valid"]
    assert set(texts) == set(valid["query"].str.strip()) | set(valid["passage"].str.strip())
    forbidden = traindata.eval_texts(mirror)
    assert not any(traindata.overlaps(x, forbidden) for x in texts)
    # the stage's own guard: a held-out text that is an XQuAD-R question stops it
    question = evaldata.read_squad_json(evaldata.raw_file(mirror, "xquad_r", "de"))[0]["qas"][0]["question"]
    leaked = pairs.copy()
    leaked.loc[leaked.index[leaked["split"] == "valid"][0], "query"] = question
    with pytest.raises(CannotRun, match="dev texts equal XQuAD-R"):
        devdata.check_no_eval_text(devdata.dev_tables(leaked), forbidden)


def test_dev_is_one_more_evaluated_dataset(repo: Path) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["experiments"]["dev"] = True
    assert "arcd" in params["data"]["train_sources"]
    names = {s.name: s for s in stages(params)}
    assert set(names["dev_data"].outs) == {"data/dev/", "data/dev_qa/"} and "data/train/" in names["dev_data"].deps
    assert "--qa-out data/dev_qa" in names["dev_data"].cmd
    for tag in ["zeroshot"] + [r.tag for r in runs(params)]:
        for ds in ("dev", "dev_qa"):
            assert f"data/{ds}/" in names[f"encode_{tag.replace('-', '_')}_{ds}"].deps
            assert f"results/e5-small/{tag}/{ds}/metrics.json" in names[f"evaluate_{tag.replace('-', '_')}_{ds}"].metrics
    assert f"results/e5-small/{runs(params)[0].tag}/dev/metrics.json" in names["report"].deps
    # no ARCD among the training sources: no QA part
    params["data"]["train_sources"] = ["ntrex", "tico19"]
    names = {s.name: s for s in stages(params)}
    assert names["dev_data"].outs == ("data/dev/",) and "--qa-out" not in names["dev_data"].cmd
    assert not any(n.endswith("_dev_qa") for n in names)
    params["experiments"]["dev"] = False
    off = render_dvc_yaml(params)
    assert "dev_data" not in off and "/dev/" not in off


def test_qa_part_is_held_out_arcd_against_every_sentence_of_its_paragraphs(mirror: Path, repo: Path,
                                                                           tmp_path: Path) -> None:
    """The QA dev part on the real ARCD file: held-out questions only; every sentence of their paragraphs
    (and nothing else) as candidates, each question's relevant one being its pair's answer sentence;
    written by the stage beside the parallel part, free of evaluation text; one mono cell when scored."""
    data = yaml.safe_load((repo / "params.yaml").read_text())["data"] | {
        "train_sources": ["ntrex", "arcd"], "train_langs": ["ar", "de", "en"], "max_groups_per_source": 300,
        "valid_fraction": 0.2}
    pairs, _ = traindata.build_pairs(mirror, data)
    pairs.to_parquet(tmp_path / "pairs.parquet", index=False)
    assert main(["dev-data", "--pairs", str(tmp_path / "pairs.parquet"), "--raw", str(mirror),
                 "--out", str(tmp_path / "dev"), "--qa-out", str(tmp_path / "dev_qa")]) == 0
    t = evaldata.EvalTables(*(pd.read_parquet(tmp_path / "dev_qa" / f"{n}.parquet")
                              for n in ("queries", "candidates", "qrels")))
    held = pairs[(pairs["source"] == "arcd") & (pairs["split"] == "valid")]
    assert sorted(t.queries["qid"]) == sorted(held["group_id"]) and set(t.queries["lang"]) == {"ar"}
    assert set(t.candidates["context_id"]) == set(held["doc_id"])
    assert len(t.candidates) > held["passage"].nunique()   # the other sentences of the paragraphs too
    rel = t.qrels.merge(t.candidates, on=["lang", "cid"]).set_index("qid")
    assert dict(zip(held["group_id"], held["passage"].str.strip())) == rel["text"].to_dict()
    assert set(rel["context_id"]) <= set(held["doc_id"])
    trained = set(pairs.loc[pairs["split"] == "train", "doc_id"])
    assert not set(t.candidates["context_id"]) & trained   # unseen paragraphs only
    forbidden = traindata.eval_texts(mirror)
    assert not any(traindata.overlaps(x, forbidden) for x in pd.concat([t.queries["text"], t.candidates["text"]]))
    rng = np.random.default_rng(0)
    emb = Embeddings(t.queries[["lang", "qid"]], rng.normal(size=(len(t.queries), 4)).astype(np.float32),
                     t.candidates[["lang", "cid"]], rng.normal(size=(len(t.candidates), 4)).astype(np.float32), {})
    summary = M.summarise(evaluate(load_eval_tables(tmp_path / "dev_qa"), emb), ["ar"])
    assert summary["n_cells"] == {"mono": 1, "cross": 0} and summary["cr"] is None
    # no held-out ARCD row: the stage says what to change and writes nothing
    with pytest.raises(Exception, match="raise data.valid_fraction"):
        devdata.qa_dev_tables(pairs[pairs["source"] != "arcd"], mirror)
