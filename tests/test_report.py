"""The report stage on a real-shaped results tree.

Evaluation tables are small real XQuAD-R (de, el, en) and MLQA-R (ar, de, en) subsets built from the
mirror with hybridir.evaldata; every model is scored by the real evaluate stage
(hybridir.evaluate.run_evaluation) from synthetic embeddings whose properties we control: a question
vector shared by its relevant sentences in every language, plus a per-language offset (language bias)
and noise whose sizes differ between "systems". So the report sees genuine metrics.json,
per_query.parquet, eval/ and embeddings/ directories, with known orderings between systems.
"""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from hybridir.data import devdata, evaldata, traindata
from hybridir.evaluate import metrics as M
from hybridir.cli import main
from hybridir.evaluate.encode import Embeddings, write_embeddings
from hybridir.evaluate.scoring import evaluate, load_eval_tables, run_evaluation
from hybridir.pipeline.stages import dvc_yaml, model_tags, stages
from hybridir.report.build import PAPER_TABLE1, ReportInputs, build_report, experiment_grid, provenance, report_stage

DIM = 48
NOISE_SCALE = {"xquad": 1.0, "mlqa": 2.5}   # the MLQA-R subset is easier (fewer questions per context)
# system -> (language-offset size, noise size); smaller offset = less language bias.
SYSTEMS = {"zeroshot": (1.2, 0.9), "xx_mono": (1.0, 1.3), "xy": (0.3, 0.8), "hybrid": (0.3, 0.8),
           "a0.25": (0.5, 0.9), "f0.5": (0.6, 1.1), "rdistill": (0.1, 0.4), "rbitext": (0.3, 0.8)}
SAME_AS_XY = ("hybrid", "rbitext")   # exactly X-Y's vectors: pairs whose differences must come out n.s.


def _xquad(mirror: Path) -> evaldata.EvalTables:
    t = evaldata.build_dataset(mirror, "xquad_r", eval_langs=["de", "el", "en"])
    contexts = [f"c{i:04d}" for i in range(6)]
    cands = t.candidates[t.candidates["context_id"].str.split("/").str[1].isin(contexts)]
    qids = sorted(set(t.qrels.loc[t.qrels["cid"].isin(cands["cid"]), "qid"]))
    return evaldata.EvalTables(t.queries[t.queries["qid"].isin(qids)], cands, t.qrels[t.qrels["qid"].isin(qids)])


def _mlqa(mirror: Path) -> evaldata.EvalTables:
    t = evaldata.build_dataset(mirror, "mlqa_r", eval_langs=["ar", "de", "en"])
    n_langs = t.queries.groupby("qid")["lang"].nunique()
    qids = sorted(n_langs[n_langs >= 2].index)[:40]
    qrels = t.qrels[t.qrels["qid"].isin(qids)]
    c = t.candidates.reset_index(drop=True)
    pos = pd.Index(c["cid"]).get_indexer(qrels["cid"])
    near = sorted({p + d for p in pos for d in (-2, -1, 0, 1, 2) if 0 <= p + d < len(c)})
    return evaldata.EvalTables(t.queries[t.queries["qid"].isin(qids)], c.iloc[near], qrels)


def _dev(mirror: Path, repo: Path) -> evaldata.EvalTables:
    """The dev benchmark (devdata.py) of a small real pairs table: held-out NTREX documents in ar, de, en."""
    data = yaml.safe_load((repo / "params.yaml").read_text())["data"] | {
        "train_sources": ["ntrex"], "train_langs": ["ar", "de", "en"], "max_groups_per_source": 100,
        "valid_fraction": 0.2}
    return devdata.dev_tables(traindata.build_pairs(mirror, data)[0])


def _dev_qa(mirror: Path, repo: Path) -> evaldata.EvalTables:
    """The QA dev part (devdata.qa_dev_tables) of a small real pairs table: held-out ARCD questions."""
    data = yaml.safe_load((repo / "params.yaml").read_text())["data"] | {
        "train_sources": ["arcd"], "train_langs": ["ar"], "max_groups_per_source": 300, "valid_fraction": 0.2}
    return devdata.qa_dev_tables(traindata.build_pairs(mirror, data)[0], mirror)


def synthetic_embeddings(tables: evaldata.EvalTables, system: str, seed: int) -> Embeddings:
    """Question meaning vectors shared across languages (fixed), language offsets (fixed), noise
    (per system and seed), scaled per system."""
    bias, noise = SYSTEMS[system]
    world = np.random.default_rng(0)
    qids = sorted(set(tables.queries["qid"]))
    meaning = dict(zip(qids, world.normal(size=(len(qids), DIM))))
    langs = sorted(set(tables.candidates["lang"]))
    offset = dict(zip(langs, world.normal(size=(len(langs), DIM))))
    cids = tables.candidates["cid"].tolist()
    cand = world.normal(size=(len(cids), DIM))
    row = {c: i for i, c in enumerate(cids)}
    for cid, group in tables.qrels.groupby("cid"):
        cand[row[cid]] = np.mean([meaning[q] for q in group["qid"]], axis=0) + 0.3 * world.normal(size=DIM)
    rng = np.random.default_rng(1000 * seed + sorted(SYSTEMS).index("xy" if system in SAME_AS_XY else system))
    scale = NOISE_SCALE["mlqa" if "ar" in langs else "xquad"]
    q = np.stack([meaning[x] for x in tables.queries["qid"]])
    q += scale * noise * rng.normal(size=(len(tables.queries), DIM))
    q += bias * np.stack([offset[x] for x in tables.queries["lang"]])
    c = cand + bias * np.stack([offset[x] for x in tables.candidates["lang"]])
    meta = {"model": f"synthetic {system}", "queries_s": 1.5, "candidates_s": 4.0, "device": "cpu",
            "precision": "fp32"}
    return Embeddings(tables.queries[["lang", "qid"]].reset_index(drop=True), q.astype(np.float32),
                      tables.candidates[["lang", "cid"]].reset_index(drop=True), c.astype(np.float32), meta)


def grid_params(repo: Path) -> dict[str, Any]:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"].update(eval_datasets=["xquad_r", "mlqa_r"], eval_langs=None,
                          train_langs=["ar", "de", "en", "es", "hi", "ru", "th", "tr", "zh"])
    params["train"]["alpha"] = 0.5
    params["experiments"].update(strategies=["xx_mono", "xy", "hybrid"], seeds=[0, 1],
                                 alpha_sweep=[0, 0.25, 0.5, 1], data_fractions=[0.5, 1.0],
                                 domain_sizes=[0, 200, "all"], beir=["nfcorpus", "arguana"], dev=True,
                                 recipes={"distill": {"distill_weight": 0.2}, "bitext": {"bitext_share": 0.25},
                                          "same": {"weight_decay": params["train"]["weight_decay"]}},
                                 recipe_seeds=[0, 2])
    return params


def system_of(tag: str) -> str:
    if tag == "zeroshot":
        return tag
    name = tag.rsplit("-s", 1)[0].split("-d")[0]   # domain runs: their strategy's vectors, other noise
    for sweep in ("-a", "-f", "-r"):
        if sweep in name:
            return sweep[1] + name.split(sweep)[1]   # hybrid-a0.25 -> a0.25, xy-f0.5 -> f0.5
    return name


@pytest.fixture(scope="module")
def tree(mirror: Path, repo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("report")
    params = grid_params(repo)
    grid = experiment_grid(params)
    enc = params["encoder"]["name"]
    results = root / "results" / enc
    main_tags = set(grid.main_tags())
    matrix_tags = set(grid.matrix_tags())
    domain_noise = {"d200": 100, "dall": 200}   # seed offsets: the domain runs differ from size 0
    for ds, subset in (("xquad_r", _xquad(mirror)), ("mlqa_r", _mlqa(mirror)), ("dev", _dev(mirror, repo)),
                       ("dev_qa", _dev_qa(mirror, repo))):
        tables_dir = root / "data" / (ds if ds.startswith("dev") else f"eval/{ds}")
        evaldata.write_dataset(evaldata.EvalTables(*(df.reset_index(drop=True) for df in
                                                     (subset.queries, subset.candidates, subset.qrels))),
                               tables_dir)
        tables = load_eval_tables(tables_dir)
        langs = sorted(set(tables.candidates["lang"]))
        for tag in grid.all_tags():
            seed = 0 if tag == "zeroshot" else int(tag.rsplit("-s", 1)[1])
            seed += next((n for d, n in domain_noise.items() if f"-{d}-" in tag), 0)
            emb = synthetic_embeddings(subset, system_of(tag), seed)
            run = results / tag / ds
            if tag in matrix_tags:   # the real stage: embeddings dir, eval/ dir, metrics.json
                write_embeddings(emb, run / "embeddings")
                run_evaluation(run / "embeddings", tables_dir, run / "eval", run / "metrics.json")
            else:                  # sweeps: the report reads metrics.json only
                run.mkdir(parents=True)
                summary = M.summarise(evaluate(tables, emb), langs)
                (run / "metrics.json").write_text(json.dumps(summary))
        for tag in grid.dev_only_tags() if ds.startswith("dev") else []:   # the recipe study: dev alone
            run = results / tag / ds
            write_embeddings(synthetic_embeddings(subset, system_of(tag), int(tag.rsplit("-s", 1)[1])),
                             run / "embeddings")
            run_evaluation(run / "embeddings", tables_dir, run / "eval", run / "metrics.json")
    rng = np.random.default_rng(0)
    for tag in main_tags:
        # probe.json as `hybridir probe` writes it; the gap peaks at layer 2 for trained systems
        bias = SYSTEMS[system_of(tag)][0]
        gap = [0.05, 0.1, 0.2 - 0.1 * bias, 0.12 - 0.05 * bias]
        (results / tag / "probe.json").write_text(json.dumps(
            {"layers": [0, 1, 2, 3], "parallel": [0.5 + g for g in gap], "random": [0.5] * 4, "gap": gap,
             "n_units": 96, "langs": ["ar", "de", "en"], "n_sentences": 288}))
        for name in ("nfcorpus", "arguana"):
            path = results / tag / "beir" / f"{name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"dataset": name, "ndcg10": 0.3 + 0.05 * rng.random(),
                                        "recall100": 0.7 + 0.1 * rng.random(), "subsampled": False}))
        if tag != "zeroshot":
            run_dir = root / "models" / "trained" / enc / tag
            run_dir.mkdir(parents=True)
            (run_dir / "train_summary.json").write_text(json.dumps(
                {"seconds": 812.4, "steps": 100, "best_step": 75, "steps_per_s": 0.14, "device": "cpu",
                 "returned_base_model": False}))
    for i, tag in enumerate(grid.recipe_tags()):   # loss.csv as `hybridir train` writes it
        run_dir = root / "models" / "trained" / enc / tag
        run_dir.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"step": [0, 10, 20], "train_loss": [np.nan, 1.0, 0.9], "lr": [0, 1e-5, 0],
                      "valid_loss": [1.2, 0.8 - 0.01 * i, np.nan], "batch_type": ["", "xy", "xx_mono"]}
                     ).to_csv(run_dir / "loss.csv", index=False)
    for tag in matrix_tags - main_tags:   # the domain runs: NFCorpus rises with the domain size
        path = results / tag / "beir" / "nfcorpus.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"dataset": "nfcorpus", "ndcg10": 0.4 if "-dall-" in tag else 0.36,
                                    "recall100": 0.8, "subsampled": False}))
    return {"root": root, "params": params, "results": results, "grid": grid,
            "models": root / "models" / "trained" / enc}


@pytest.fixture(scope="module")
def report(tree: dict[str, Any]) -> dict[str, Any]:
    out = tree["root"] / "reports"
    summary = build_report(tree_inputs(tree, 2000), out)
    return {"out": out, "summary": summary, "md": (out / "report.md").read_text()}


def tree_inputs(tree: dict[str, Any], n_permutations: int, **params: Any) -> ReportInputs:
    """The report's inputs on the fixture tree, laid out as the stage table's paths under its root."""
    return ReportInputs(params={**tree["params"], **params}, results=tree["results"], models_dir=tree["models"],
                        n_permutations=n_permutations)


def test_grid_tags_are_the_stage_tables(tree: dict[str, Any]) -> None:
    grid, params = tree["grid"], tree["params"]
    assert grid.systems["hybrid"] == ["hybrid-s0", "hybrid-s1"]
    # A sweep point that is another run's setting reads that run (pipeline.make_run).
    assert grid.alpha[0.0] == ["xy-s0", "xy-s1"] and grid.alpha[1.0] == ["xx_mono-s0", "xx_mono-s1"]
    assert grid.alpha[0.5] == ["hybrid-s0", "hybrid-s1"]
    assert grid.alpha[0.25] == ["hybrid-a0.25-s0", "hybrid-a0.25-s1"]
    assert grid.fraction["xy", 0.5] == ["xy-f0.5-s0", "xy-f0.5-s1"]
    assert grid.fraction["xx_mono", 1.0] == ["xx_mono-s0", "xx_mono-s1"]
    assert grid.beir == ["nfcorpus", "arguana"]
    # The recipe study: "same" equals train's settings, so it is the default; seed 2 is outside the
    # main grid, so its default run is a dev-only one.
    assert grid.recipes == {"default": ["hybrid-s0", "hybrid-s2"], "distill": ["hybrid-rdistill-s0", "hybrid-rdistill-s2"],
                            "bitext": ["hybrid-rbitext-s0", "hybrid-rbitext-s2"]}
    assert grid.dev_only_tags() == ["hybrid-s2", "hybrid-rdistill-s0", "hybrid-rdistill-s2", "hybrid-rbitext-s0",
                                    "hybrid-rbitext-s2"]
    # Every tag the report reads is a model the pipeline trains and evaluates, and vice versa.
    assert set(grid.all_tags()) | set(grid.recipe_tags()) == set(model_tags(params))


def test_headline_tables_match_the_metrics_files(tree: dict[str, Any], report: dict[str, Any]) -> None:
    md, summary = report["md"], report["summary"]
    results = tree["results"]
    for ds in ("xquad_r", "mlqa_r"):
        for system, tags in tree["grid"].systems.items():
            bodies = [json.loads((results / t / ds / "metrics.json").read_text()) for t in tags]
            for metric in ("mo", "cr", "mul", "rank_distance"):
                values = [b[metric] for b in bodies]
                got = summary["headline"][ds][system]
                assert got[metric] == pytest.approx(np.mean(values))
                if len(values) > 1:
                    assert got[f"{metric}_std"] == pytest.approx(np.std(values, ddof=1))
                else:
                    assert f"{metric}_std" not in got  # zero-shot: one run, no std
    # Table 1 with our numbers (mean ± std over the two seeds) beside the paper's, labelled.
    xy = summary["headline"]["xquad_r"]["xy"]
    row = next(line for line in md.splitlines() if line.startswith("| X-Y |"))
    assert f"{xy['mo']:.3f} ± {xy['mo_std']:.3f}" in row
    assert "0.755 / 0.700 / 0.593" in row and "0.801 / 0.762 / 0.679" in row   # XLM-R, LaBSE
    assert "paper XLM-R Mo. / Cr. / Mul." in md and "arXiv:2408.10536" in md
    assert "Not directly comparable with the paper" in md and "inverse-cloze" in md
    zs = next(line for line in md.splitlines() if line.startswith("| zero-shot (base) |"))
    assert "±" not in zs
    # Table 2: rank distance beside the paper's.
    assert "## 2. Language bias: rank distance" in md
    table2 = md.split("## 2. Language bias")[1].split("###")[0]
    rd_row = next(line for line in table2.splitlines() if line.startswith("| hybrid (α = 0.5) |"))
    assert "| 287 | 221 |" in rd_row and "| 227 | 195 |" in rd_row
    # headline.csv: one row per system and dataset.
    head = pd.read_csv(report["out"] / "headline.csv")
    assert list(head.columns[:6]) == ["strategy", "dataset", "mo", "cr", "mul", "rank_distance"]
    assert len(head) == 12 and set(head["dataset"]) == {"xquad_r", "mlqa_r", "dev"}   # the dev set beside
    assert "### dev (held-out training documents)" in md and "> **dev (held-out training documents)**" in md
    assert PAPER_TABLE1["XLM-R"]["hybrid"]["xquad_r"] == (.798, .705, .593)


def test_significance_section(report: dict[str, Any]) -> None:
    md, sig = report["md"], report["summary"]["significance"]
    # X-Y and hybrid have identical embeddings here: difference 0, p = 1, marked n.s.
    for ds in ("xquad_r", "mlqa_r"):
        for metric in ("mo", "cr", "mul"):
            assert sig[ds]["hybrid_vs_xy"][metric]["diff"] == 0.0
            assert sig[ds]["hybrid_vs_xy"][metric]["p_holm"] == 1.0
    row = next(line for line in md.splitlines() if line.startswith("| hybrid (α = 0.5) vs X-Y |"))
    assert row.count("n.s.") == 3 and "+0.000" in row
    # Less language bias (X-Y) vs more (X-X-mono): a clear multilingual gain, significant after Holm.
    assert sig["xquad_r"]["xx_mono_vs_xy"]["mul"]["diff"] < -0.05
    assert sig["xquad_r"]["xx_mono_vs_xy"]["mul"]["p_holm"] < 0.05
    row = next(line for line in md.splitlines() if line.startswith("| X-X-mono vs X-Y |"))
    assert row.split("|")[7].strip().endswith("n.s.") is False   # the Mul. p column
    raw = [sig["xquad_r"][pair]["mo"]["p"] for pair in sig["xquad_r"]]
    holm = [sig["xquad_r"][pair]["mo"]["p_holm"] for pair in sig["xquad_r"]]
    assert all(h >= p for h, p in zip(holm, raw))
    assert len(sig["xquad_r"]) == 6
    assert "Holm–Bonferroni adjusted over the 6 comparisons" in md
    assert "exchangeable unit is the *question*" in md


def test_per_language_tables_mark_unseen_languages(report: dict[str, Any], tree: dict[str, Any]) -> None:
    md = report["md"]
    assert "unseen here: el, vi" not in md  # vi is not in these subsets
    assert "unseen here: el." in md
    section = md.split("## 4. Per language")[1].split("## 5.")[0]
    assert section.count("| el* |") == 4        # mono, cross, multi, rank distance for XQuAD-R
    assert "| de |" in section and "| de* |" not in section
    assert "\\* not in data.train_langs: never seen in training." in section
    # A per-language value equals the seed mean from the metrics files.
    bodies = [json.loads((tree["results"] / t / "mlqa_r" / "metrics.json").read_text())
              for t in ("xy-s0", "xy-s1")]
    value = np.mean([b["per_lang"]["ar"]["mul"] for b in bodies])
    mlqa = section.split("### MLQA-R")[1]
    multi_table = mlqa.split("**Multilingual mAP")[1].split("**Rank distance")[0]
    ar_row = next(line for line in multi_table.splitlines() if line.startswith("| ar |"))
    assert f"{value:.3f}" in ar_row


def test_figures_sweeps_beir_and_provenance(report: dict[str, Any], tree: dict[str, Any]) -> None:
    out, md, summary = report["out"], report["md"], report["summary"]
    links = re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", md)
    assert set(links) == {"figures/map_matrices_xquad_r.png", "figures/map_matrices_mlqa_r.png",
                          "figures/map_matrices_dev.png", "figures/alpha_sweep.png", "figures/data_size.png",
                          "figures/alignment_gap_xquad_r.png", "figures/alignment_gap_mlqa_r.png",
                          "figures/alignment_gap_dev.png", "figures/alignment_probe.png", "figures/domain_size.png"}
    for link in links:
        assert (out / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    alpha = pd.read_csv(out / "alpha_sweep.csv")
    assert sorted(set(alpha["alpha"])) == [0.0, 0.25, 0.5, 1.0] and set(alpha["dataset"]) == {"xquad_r", "mlqa_r", "dev"}
    mid = alpha[(alpha["alpha"] == 0.5) & (alpha["dataset"] == "xquad_r")].iloc[0]
    values = [json.loads((tree["results"] / t / "xquad_r" / "metrics.json").read_text())["mo"]
              for t in ("hybrid-s0", "hybrid-s1")]
    assert mid["mo"] == pytest.approx(np.mean(values)) and mid["mo_std"] == pytest.approx(np.std(values, ddof=1))
    assert (alpha["n_seeds"] == 2).all()
    size = pd.read_csv(out / "data_size.csv")
    assert len(size) == 3 * 3 * 2 and set(size["fraction"]) == {0.5, 1.0}
    full = size[(size["fraction"] == 1.0) & (size["strategy"] == "xy") & (size["dataset"] == "mlqa_r")].iloc[0]
    values = [json.loads((tree["results"] / t / "mlqa_r" / "metrics.json").read_text())["cr"]
              for t in ("xy-s0", "xy-s1")]
    assert full["cr"] == pytest.approx(np.mean(values))
    beir = pd.read_csv(out / "beir.csv")
    assert len(beir) == 2 * 4
    assert set(summary["beir"]) == {"nfcorpus", "arguana"}
    assert "## 8. English domain checks (BEIR)" in md and "NFCorpus nDCG@10" in md
    # "How produced": the declared params, input hashes, the stage commands; timings elsewhere.
    how = md.split("How this report was produced")[1]
    assert "| data.train_langs | `['ar', 'de'," in how and "| experiments.seeds | `[0, 1]`" in how
    assert "lr" not in how   # not a param the report stage declares
    assert "`results/e5-small/xy-s1/xquad_r/metrics.json`" in how
    assert "hybridir evaluate --params" in how
    assert json.loads((out / "summary.json").read_text()) == summary


def test_fairness_gap_and_probe_sections(report: dict[str, Any], tree: dict[str, Any]) -> None:
    md, summary, results = report["md"], report["summary"], tree["results"]
    # Fairness table: seed means of the metrics files' peer and rank_corr.
    assert "## 10. Language fairness: PEER and rank agreement" in md
    section = md.split("## 10. Language fairness")[1].split("## 11.")[0]
    bodies = [json.loads((results / t / "xquad_r" / "metrics.json").read_text()) for t in ("xy-s0", "xy-s1")]
    for key in ("peer", "rank_corr"):
        mean = np.mean([b[key] for b in bodies])
        assert summary["fairness"]["xquad_r"]["xy"][key] == pytest.approx(mean)
        row = next(line for line in section.splitlines() if line.startswith("| X-Y |"))
        assert f"{mean:.3f} ± {np.std([b[key] for b in bodies], ddof=1):.3f}" in row
    # Per query language: the seed means of per_lang.<lang>.peer / .rank_corr, one table per dataset.
    per_lang = section.split("Per query language, XQuAD-R")[1]
    langs = sorted(bodies[0]["per_lang"])
    header = next(line for line in per_lang.splitlines() if line.startswith("| batches |"))
    assert header == "| batches | " + " | ".join(langs) + " |"
    row = next(line for line in per_lang.splitlines() if line.startswith("| X-Y |")).split(" | ")[1:]
    for lang, cell in zip(langs, row):
        peer, corr = (np.mean([b["per_lang"][lang][k] for b in bodies]) for k in ("peer", "rank_corr"))
        assert cell.strip(" |") == f"{peer:.3f} / {corr:.3f}"
    # Less language bias, fairer: the synthetic X-Y has a smaller language offset than X-X-mono.
    fair = summary["fairness"]["xquad_r"]
    assert fair["xy"]["rank_corr"] > fair["xx_mono"]["rank_corr"]
    # Gap sentence recomputed from the evaluate stage's map_mono_cross.csv files.
    def gap(tags: list[str], ds: str) -> pd.DataFrame:
        m = sum(pd.read_csv(results / t / ds / "eval" / "map_mono_cross.csv", index_col=0) for t in tags) / len(tags)
        return pd.DataFrame(np.diag(m.to_numpy())[:, None] - m.to_numpy(), index=m.index, columns=m.columns)
    base, xy = gap(["zeroshot"], "mlqa_r"), gap(["xy-s0", "xy-s1"], "mlqa_r")
    off = ~np.eye(len(base), dtype=bool)
    closed = np.where(off, (base - xy).to_numpy(), np.nan)
    i, j = np.unravel_index(np.nanargmax(closed), closed.shape)
    gaps = md.split("Alignment gap")[1].split("### MLQA-R")[1].split("### dev")[0]
    assert (f"X-Y closes the gap most on {base.index[i]}→{base.columns[j]}: {base.iat[i, j]:.3f} → "
            f"{xy.iat[i, j]:.3f}") in gaps
    assert f"mean over cells {np.nanmean(base.to_numpy()[off]):.3f} → {np.nanmean(xy.to_numpy()[off]):.3f}" in gaps
    assert gaps.count("closes the gap most") == 3   # one per trained strategy
    # Probe: one line per model, peak layer from probe.json.
    probe = md.split("Layer-wise alignment probe")[1].split("## ")[0]
    assert "| X-Y s1 | 2 |" in probe and "96 held-out NTREX units in 3 languages" in probe
    assert summary["probe_gap"]["zeroshot"] == json.loads((results / "zeroshot" / "probe.json").read_text())["gap"]


def test_missing_result_file_names_it_and_its_stage(tree: dict[str, Any], tmp_path: Path) -> None:
    results = tmp_path / "results"
    shutil.copytree(tree["results"], results)
    (results / "hybrid-a0.25-s1" / "mlqa_r" / "metrics.json").unlink()
    (results / "xy-s0" / "beir" / "arguana.json").unlink()
    (results / "hybrid-rdistill-s2" / "dev" / "metrics.json").unlink()   # a recipe run: dev only
    inp = ReportInputs(params=tree["params"], results=results, models_dir=tree["models"], n_permutations=100)
    with pytest.raises(FileNotFoundError) as err:
        build_report(inp, tmp_path / "reports")
    message = str(err.value)
    assert "3 result file(s)" in message
    assert "hybrid-rdistill-s2/dev/metrics.json  <- stage evaluate_hybrid_rdistill_s2_dev" in message
    assert f"{results}/hybrid-a0.25-s1/mlqa_r/metrics.json  <- stage evaluate_hybrid_a0_25_s1_mlqa_r" in message
    assert "xy-s0/beir/arguana.json  <- stage beir_xy_s0_arguana" in message
    assert not (tmp_path / "reports").exists()  # nothing half-written


def test_cli_with_the_repository_params(tree: dict[str, Any], repo: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """`hybridir report` with a validated params file (the main grid; sweeps as configured there)."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["eval_datasets"] = ["xquad_r", "mlqa_r"]
    params["experiments"].update(strategies=["xx_mono", "xy", "hybrid"], seeds=[0, 1])
    for key in ("alpha_sweep", "data_fractions", "beir"):
        if key in params["experiments"]:
            params["experiments"][key] = []
    params["experiments"]["probe"] = False
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    out = tmp_path / "reports"
    assert main(["report", "--params", str(path), "--results", str(tree["results"]), "--out", str(out),
                 "--permutations", "500"]) == 0
    assert {p.name for p in out.iterdir()} == {"report.md", "summary.json", "headline.csv", "figures", "timings.md"}
    assert "xquad_r hybrid: Mo" in capsys.readouterr().err
    md = (out / "report.md").read_text()
    assert "α sweep" not in md and "BEIR" not in md and "alignment probe" not in md
    assert "Language fairness" in md and "Alignment gap" in md   # their inputs exist
    (tree["results"] / "xy-s1" / "xquad_r" / "metrics.json").rename(tmp_path / "moved.json")
    try:
        assert main(["report", "--params", str(path), "--results", str(tree["results"]), "--out",
                     str(tmp_path / "again")]) == 2
        assert "xy-s1/xquad_r/metrics.json  <- stage evaluate_xy_s1_xquad_r" in capsys.readouterr().err
    finally:
        (tmp_path / "moved.json").rename(tree["results"] / "xy-s1" / "xquad_r" / "metrics.json")


# ---------------------------------------------------------------- declared inputs and outputs

OPENED: list[tuple[str, Any]] | None = None   # set while a test records file opens


def _record_open(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and OPENED is not None and isinstance(args[0], (str, Path)):
        OPENED.append((str(args[0]), args[1]))


sys.addaudithook(_record_open)   # audit hooks cannot be removed: it records only while OPENED is a list


def _inside(rel: str, deps: tuple[str, ...]) -> bool:
    return any(rel == d or (d.endswith("/") and rel.startswith(d)) for d in deps)


def test_reads_only_declared_dependencies(tree: dict[str, Any], report: dict[str, Any], tmp_path: Path) -> None:
    """Every file the report opens under the run's root is inside a dependency of the report stage."""
    global OPENED
    root = tree["root"]
    OPENED = []
    try:
        build_report(tree_inputs(tree, 100), tmp_path / "reports")
    finally:
        opened, OPENED = OPENED, None
    reads = {Path(p).resolve() for p, mode in opened if not (isinstance(mode, str) and set(mode) & set("wax+"))}
    under_root = sorted(p.relative_to(root.resolve()).as_posix() for p in reads if root.resolve() in p.parents)
    deps = report_stage(tree["params"], "params.yaml").deps
    assert [r for r in under_root if not _inside(r, deps)] == []
    # The hook sees every kind of input: results, the per-query tables, timings, model side files.
    for name in ("metrics.json", "per_query.parquet", "info.json", "meta.json", "train_summary.json"):
        assert any(r.endswith(name) for r in under_root), name
    assert not any("benchmarks" in r for r in under_root)


def test_outputs_are_the_stage_tables(tree: dict[str, Any], report: dict[str, Any]) -> None:
    stage = report_stage(tree["params"], "params.yaml")
    written = {p.relative_to(report["out"].parent).as_posix() + ("/" if p.is_dir() else "")
               for p in report["out"].iterdir()}
    assert written == set(stage.all_outs)
    assert stage.uncached == ("reports/timings.md",) and stage.metrics == ("reports/summary.json",)
    dvc = dvc_yaml(stages(tree["params"]), tree["params"])
    assert {"reports/timings.md": {"cache": False, "persist": True}} in dvc["stages"]["report"]["outs"]
    assert "reports" not in dvc["stages"]["report"]["outs"]   # DVC outputs may not overlap
    plotted = {name for entry in dvc["plots"] for name in entry if name.startswith("reports/")}
    assert plotted == {"reports/alpha_sweep.csv", "reports/data_size.csv", "reports/domain_size.csv"} <= set(stage.outs)
    # Wall times and devices live in timings.md only: report.md is the same for every run.
    timings = (report["out"] / "timings.md").read_text()
    assert "| xy-s1 | 812 | 100 | 75 | 0.14 | cpu |" in timings and "| XQuAD-R | zeroshot | 5.5 | cpu |" in timings
    assert "| 812 |" not in report["md"] and "wall s" not in report["md"] and "info.json" not in report["md"]


def test_provenance_follows_declared_inputs_only(tree: dict[str, Any], tmp_path: Path) -> None:
    before = provenance(tree_inputs(tree, 100), tree["grid"], stages(tree["params"]))
    assert set(before["params"]) == set(report_stage(tree["params"], "params.yaml").params)
    assert {"experiments.seeds", "data.train_langs"} <= set(before["params"])
    assert "results/e5-small/xy-s0/xquad_r/metrics.json" in before["inputs"]
    assert "src/hybridir/report/build.py" in before["inputs"]
    # An edit to a key the stage does not declare re-runs nothing and changes nothing here.
    other = {**tree["params"], "evaluate": {**tree["params"]["evaluate"], "top_k": 7}}
    assert provenance(tree_inputs(tree, 100, evaluate=other["evaluate"]), tree["grid"], stages(other)) == before
    # A changed declared input (a metrics file; a per-query table inside an eval directory) does.
    results = tmp_path / "results"
    shutil.copytree(tree["results"], results)
    (results / "xy-s0" / "xquad_r" / "metrics.json").write_text("{}")
    per_query = results / "hybrid-s1" / "mlqa_r" / "eval" / "per_query.parquet"
    pd.read_parquet(per_query).iloc[:-1].to_parquet(per_query)
    inp = ReportInputs(params=tree["params"], results=results, models_dir=tree["models"], n_permutations=100)
    after = provenance(inp, tree["grid"], stages(tree["params"]))
    changed = {k for k in before["inputs"] if before["inputs"][k] != after["inputs"][k]}
    assert changed == {"results/e5-small/xy-s0/xquad_r/metrics.json", "results/e5-small/hybrid-s1/mlqa_r/eval/"}


def test_domain_size_section(report: dict[str, Any], tree: dict[str, Any]) -> None:
    out, md, summary = report["out"], report["md"], report["summary"]
    assert tree["grid"].domain["xy", "0"] == ["xy-s0", "xy-s1"]          # size 0 is the main run
    assert tree["grid"].domain["xy", "all"] == ["xy-dall-s0", "xy-dall-s1"]
    table = pd.read_csv(out / "domain_size.csv", dtype={"domain_size": str})
    assert len(table) == 3 * 3 * 3 and list(dict.fromkeys(table["domain_size"])) == ["0", "200", "all"]   # datasets (xquad_r, mlqa_r, dev) x strategies x sizes
    row = table[(table["strategy"] == "hybrid") & (table["domain_size"] == "all")].iloc[0]
    assert row["nfcorpus_ndcg10"] == pytest.approx(0.4)
    values = [json.loads((tree["results"] / t / "xquad_r" / "metrics.json").read_text())["mul"]
              for t in ("hybrid-dall-s0", "hybrid-dall-s1")]
    assert row["mul"] == pytest.approx(np.mean(values))
    assert set(summary["domain_size"]["xquad_r"]["xy"]) == {"0", "200", "all"}
    assert "Domain data (NFCorpus)" in md and "![domain size](figures/domain_size.png)" in md
    assert "| Mo. | Cr. | Mul. | rank distance | NFCorpus nDCG@10 |" in md
    # the per-pair changes: one row per strategy and non-zero size, against the main run
    section = md.split("Domain data (NFCorpus)")[1].split("\n## ")[0]
    assert section.count("| X-Y ") >= 2 * 2 and "largest drops" in section


def test_recipe_study_section(report: dict[str, Any], tree: dict[str, Any]) -> None:
    """The recipe table on the dev benchmark: seed means of the dev metrics, the selected validation
    loss from loss.csv, and paired tests against the default at the recipe seeds."""
    rec, md, results = report["summary"]["recipes"], report["md"], tree["results"]
    assert list(rec) == ["default", "distill", "bitext"]   # "same" is the default: not a row of its own
    for name, tags in tree["grid"].recipes.items():
        if name == "same":
            continue
        bodies = [json.loads((results / t / "dev" / "metrics.json").read_text()) for t in tags]
        assert rec[name]["mo"] == pytest.approx(np.mean([b["mo"] for b in bodies]))
        assert rec[name]["mean3"] == pytest.approx(np.mean([np.mean([b[m] for m in ("mo", "cr", "mul")])
                                                            for b in bodies]))
        losses = [pd.read_csv(tree["models"] / t / "loss.csv")["valid_loss"].min() for t in tags]
        assert rec[name]["valid_loss"] == pytest.approx(np.mean(losses))
    for metric in ("mo", "cr", "mul", "qa_mo"):
        assert rec["bitext"][f"{metric}_diff"] == 0.0 and rec["bitext"][f"{metric}_p_holm"] == 1.0   # same vectors
        assert rec["distill"][f"{metric}_diff"] > 0 and rec["distill"][f"{metric}_p_holm"] < 0.05    # less noise
    assert "## 13. Recipe study (dev benchmark)" in md
    row = next(line for line in md.splitlines() if line.startswith("| distill |"))
    assert "`distill_weight=0.2`" in row and f"{rec['distill']['mo']:.3f} ±" in row
    assert pd.read_csv(report["out"] / "recipes.csv")["recipe"].tolist() == ["default", "distill", "bitext"]
    # the recipe runs are scored on the dev benchmark only
    assert not (results / "hybrid-rdistill-s0" / "xquad_r").exists()


def test_qa_dev_part(report: dict[str, Any], tree: dict[str, Any]) -> None:
    """The one-cell QA dev part: its own small table (Mo., R@1), summary.json entry and recipe column; the
    main tables (Cr., Mul., significance) leave it out."""
    md, summary, results = report["md"], report["summary"], tree["results"]
    for system, tags in tree["grid"].systems.items():
        values = [json.loads((results / t / "dev_qa" / "metrics.json").read_text())["mo"] for t in tags]
        assert summary["dev_qa"][system]["mo"] == pytest.approx(np.mean(values))
    assert "### dev QA (held-out ARCD questions, ar)" in md
    assert "dev_qa" not in summary["headline"] and "dev_qa" not in summary["significance"]
    qa = [json.loads((results / t / "dev_qa" / "metrics.json").read_text())["mo"]
          for t in tree["grid"].recipes["distill"]]
    assert summary["recipes"]["distill"]["qa_mo"] == pytest.approx(np.mean(qa))
    assert "| QA Mo. |" in md and "| QA Mo. Δ (p) |" in md
