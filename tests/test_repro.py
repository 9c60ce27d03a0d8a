"""Reproducibility with the real DVC and Snakemake, on the smoke pipeline (config/smoke.yaml).

Two full smoke runs, shared by every test here (fixtures in pipeline_helpers): one by `dvc repro`
in a git repository, pushed to a local remote and pulled into a fresh clone; one by Snakemake in
a second copy. Comparing them checks determinism (one seed, two runs) and that the two tools
produce the same results.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import pytest
import yaml

pytest.register_assert_rewrite("pipeline_helpers")  # before the import: it is also a plugin
from pipeline_helpers import (BIN, TIMING_KEY, DvcRun, SnakemakeRun, Workdir, downstream, dvc, dvc_changed,
                              dvc_ran, edited_params, output_files, run_differences, sh, snakemake_plan,
                              traces)

pytest_plugins = ["pipeline_helpers"]
pytestmark = pytest.mark.slow

# What a researcher runs after `dvc pull` (README). DVC restores contents but not modification
# times, so Snakemake's mtime check would re-run jobs whose inputs happen to be checked out later
# than their outputs. --touch marks outputs up to date in DAG order without running anything;
# --forceall makes it do so for every job, so each one gets Snakemake's provenance record
# (params, code) and later param changes re-run exactly what they reach, as in a Snakemake run.
POST_PULL = ("snakemake", "--touch", "--forceall", "--cores", "1")


def stage_names(workdir: Path) -> set[str]:
    return set(yaml.safe_load((workdir / "dvc.yaml").read_text())["stages"])


@pytest.fixture
def dvc_repo(dvc_smoke: DvcRun) -> Iterator[DvcRun]:
    """The DVC run, put back as committed afterwards (params, dvc.lock and the outputs)."""
    yield dvc_smoke
    sh(["git", "reset", "-q", "--hard", "HEAD"], dvc_smoke.repo, dvc_smoke.env)
    dvc(dvc_smoke.repo, dvc_smoke.env, "checkout", "--force")
    assert dvc_changed(dvc_smoke.repo, dvc_smoke.env) == {}


# ---------------------------------------------------------------- 1. cached artifacts


def test_dvc_repro_ran_every_stage(dvc_smoke: DvcRun) -> None:
    assert sorted(dvc_ran(dvc_smoke.repro_output)) == sorted(stage_names(dvc_smoke.repo))
    assert dvc_changed(dvc_smoke.repo, dvc_smoke.env) == {}


def test_fresh_clone_after_dvc_pull_has_nothing_to_run(dvc_smoke: DvcRun, pulled_clone: Workdir) -> None:
    clone, env = pulled_clone.path, pulled_clone.env
    files = output_files(dvc_smoke.repo)
    assert output_files(clone) == files
    assert all((clone / f).read_bytes() == (dvc_smoke.repo / f).read_bytes() for f in files)
    assert dvc_changed(clone, env) == {}
    assert dvc_ran(dvc(clone, env, "repro")) == []


def test_snakemake_after_pull_and_touch_has_nothing_to_run(pulled_clone: Workdir) -> None:
    clone, env = pulled_clone.path, pulled_clone.env
    sh(list(POST_PULL), clone, env)
    assert snakemake_plan(clone, env) == {}
    # Snakemake's .snakemake_timestamp markers (created by --touch in directory outputs) are in
    # .dvcignore, so DVC still sees the pulled outputs unchanged.
    assert dvc_changed(clone, env) == {}
    # Provenance for every job: a param change reaches the right jobs, the data stages included.
    with edited_params(clone, {"evaluate.top_k": 50}):
        assert set(snakemake_plan(clone, env)) == _evaluate_stages(clone) | {"report", "all"}
    with edited_params(clone, {"data.seed": 1}):
        assert {"eval_data", "train_data"} <= set(snakemake_plan(clone, env))
    assert snakemake_plan(clone, env) == {}


# ---------------------------------------------------------------- 3. determinism


def test_same_seed_same_results_from_dvc_and_snakemake(dvc_smoke: DvcRun, snakemake_smoke: SnakemakeRun) -> None:
    a, b = dvc_smoke.repo, snakemake_smoke.path
    assert run_differences(a, b) == []   # every output file, bytes (JSON side files: minus timings)
    batches = sorted((a / "data" / "batches").glob("*.parquet"))
    assert len(batches) == 3
    for path in batches:
        assert path.read_bytes() == (b / path.relative_to(a)).read_bytes(), path.name
    metrics = sorted(a.glob("results/*/*/*/metrics.json"))
    assert len(metrics) == 8   # zero-shot + 3 strategies, 2 datasets
    for path in metrics:
        body = json.loads(path.read_text())
        assert body == json.loads((b / path.relative_to(a)).read_text()), path
        assert not [k for k in _keys(body) if TIMING_KEY.search(k)], f"{path} holds timings"
    for model in sorted(a.glob("models/trained/*/*/model.safetensors")):
        assert model.read_bytes() == (b / model.relative_to(a)).read_bytes(), model


def _keys(value: object) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _keys(v)
    elif isinstance(value, list):
        for v in value:
            yield from _keys(v)


# ---------------------------------------------------------------- 2. incremental re-runs


def _evaluate_stages(workdir: Path) -> set[str]:
    return {s for s in stage_names(workdir) if s.startswith("evaluate_")}


def _hybrid_branch(workdir: Path) -> set[str]:
    branch = {s for s in stage_names(workdir) if "_hybrid_s0" in s}
    assert sorted(s.split("_")[0] for s in branch) == ["batches", "encode", "encode", "evaluate", "evaluate",
                                                       "train"]
    return branch | {"report"}


def test_dvc_evaluation_param_reruns_only_evaluate_and_report(dvc_repo: DvcRun) -> None:
    repo, env = dvc_repo.repo, dvc_repo.env
    evaluate = _evaluate_stages(repo)
    assert len(evaluate) == 8
    with edited_params(repo, {"evaluate.top_k": 50}):
        assert set(dvc_changed(repo, env)) == evaluate
        ran = dvc_ran(dvc(repo, env, "repro"))
    assert sorted(ran) == sorted(evaluate | {"report"})


def test_dvc_alpha_reruns_only_the_hybrid_branch(dvc_repo: DvcRun) -> None:
    repo, env = dvc_repo.repo, dvc_repo.env
    with edited_params(repo, {"train.alpha": 0.25}):
        changed = set(dvc_changed(repo, env))
    # DVC re-runs a changed stage and then whatever its new outputs reach; a dry run cannot show
    # the second part, so it is read off the DAG (the evaluation case above runs it for real).
    assert changed == {"batches_hybrid_s0", "report"}   # the report names alpha in its labels
    assert downstream(repo / "dvc.yaml", changed) == _hybrid_branch(repo)


def test_snakemake_reruns_only_what_a_param_reaches(snakemake_smoke: SnakemakeRun) -> None:
    workdir, env = snakemake_smoke.path, snakemake_smoke.env
    assert snakemake_plan(workdir, env) == {}
    with edited_params(workdir, {"evaluate.top_k": 50}):
        plan = snakemake_plan(workdir, env)
    assert set(plan) == _evaluate_stages(workdir) | {"report", "all"}
    with edited_params(workdir, {"train.alpha": 0.25}):
        plan = snakemake_plan(workdir, env)
    assert set(plan) == _hybrid_branch(workdir) | {"all"}
    assert snakemake_plan(workdir, env) == {}


# ---------------------------------------------------------------- 3. experiments, metrics and plots


def _all_dicts(node: object) -> Iterator[dict]:
    if isinstance(node, dict):
        yield node
        for child in node.values():
            yield from _all_dicts(child)
    elif isinstance(node, list):
        for child in node:
            yield from _all_dicts(child)


def _experiment(shown: object, key: str, value: str) -> dict:
    """The `data` block of the row of `dvc exp show --json` whose `key` equals `value`."""
    rows = [n["data"] for n in _all_dicts(shown) if n.get(key) == value and isinstance(n.get("data"), dict)]
    assert rows, f"no experiment with {key} = {value} in `dvc exp show --json`"
    return rows[0]


def test_dvc_exp_run_with_another_alpha_is_compared_by_exp_show(dvc_repo: DvcRun) -> None:
    repo, env = dvc_repo.repo, dvc_repo.env
    head = sh(["git", "rev-parse", "HEAD"], repo, env).stdout.strip()
    out = dvc(repo, env, "exp", "run", "-S", "train.alpha=0.3", "--name", "alpha-0.3")
    assert sorted(dvc_ran(out)) == sorted(_hybrid_branch(repo))
    shown = json.loads(dvc(repo, env, "exp", "show", "--json"))
    base, exp = _experiment(shown, "rev", head), _experiment(shown, "name", "alpha-0.3")
    assert exp["params"]["params.yaml"]["data"]["train"]["alpha"] == 0.3
    assert base["params"]["params.yaml"]["data"]["train"]["alpha"] == 0.5
    summary = {name: row["metrics"]["reports/summary.json"]["data"] for name, row in
               (("base", base), ("exp", exp))}
    for ds, systems in summary["base"]["headline"].items():
        for system in ("zeroshot", "xx_mono", "xy"):   # untouched by alpha: identical numbers
            assert summary["exp"]["headline"][ds][system] == systems[system]
        assert "hybrid" in summary["exp"]["headline"][ds]
    assert sorted(summary["exp"]["headline"]) == sorted(summary["base"]["headline"])

    metrics = json.loads(dvc(repo, env, "metrics", "show", "--json"))
    files = {f for row in _all_dicts(metrics) for f in row if f.endswith(".json")}
    assert "reports/summary.json" in files
    assert {f"results/e5-small/{tag}/{ds}/metrics.json" for tag in ("zeroshot", "hybrid-s0")
            for ds in ("xquad_r", "mlqa_r")} <= files
    plots = json.loads(dvc(repo, env, "plots", "show", "--json"))["data"]
    assert "training loss" in plots, sorted(plots)
    points = [p for entry in plots["training loss"] for p in entry["content"]["data"]["values"]]
    assert points and "step" in points[0], "the training-loss plot has no data points"



# ---------------------------------------------------------------- 4. what each stage reads


def _dvc_stages(workdir: Path) -> dict[str, dict]:
    return yaml.safe_load((workdir / "dvc.yaml").read_text())["stages"]


def _declared_params(entry: dict) -> set[str]:
    keys = entry.get("params", [])
    return {k for item in keys for k in ([item] if isinstance(item, str) else next(iter(item.values())))}


@pytest.mark.parametrize("engine", ["dvc", "snakemake"])
def test_stage_params_are_exactly_the_keys_its_code_reads(engine: str, dvc_smoke: DvcRun,
                                                          snakemake_smoke: SnakemakeRun) -> None:
    run = dvc_smoke.repo if engine == "dvc" else snakemake_smoke.path
    seen = traces(dvc_smoke.trace if engine == "dvc" else snakemake_smoke.trace)
    table = _dvc_stages(run)
    for name, entry in table.items():
        assert entry["cmd"] in seen, f"{name} left no trace"
        assert set(seen[entry["cmd"]]["params"]) == _declared_params(entry), name


def test_stage_processes_load_only_declared_code(snakemake_smoke: SnakemakeRun) -> None:
    """Runtime check of the derived code deps: every hybridir module a stage's process loaded is a
    declared dependency (the Snakemake run: under DVC the dvc.yaml check also loads the table)."""
    seen = traces(snakemake_smoke.trace)
    for name, entry in _dvc_stages(snakemake_smoke.path).items():
        for module in seen[entry["cmd"]]["modules"]:
            stem = "src/" + module.replace(".", "/")
            assert f"{stem}.py" in entry["deps"] or f"{stem}/__init__.py" in entry["deps"], (name, module)


def _importers(table: dict[str, dict], rel: str) -> set[str]:
    return {name for name, entry in table.items() if rel in entry["deps"]}


def test_editing_a_module_reruns_exactly_the_stages_that_import_it(snakemake_smoke: SnakemakeRun) -> None:
    """Every source file: DVC reports exactly its importers changed; Snakemake plans them and
    what they feed (its dry run cannot tell a changed output from a re-created one). On the Snakemake
    run, which its onsuccess hook recorded in dvc.lock, so both engines start from nothing to do."""
    repo, env = snakemake_smoke.path, snakemake_smoke.env
    table = _dvc_stages(repo)
    assert snakemake_plan(repo, env) == {} and dvc_changed(repo, env) == {}
    sources = sorted(p for p in (repo / "src" / "hybridir").rglob("*")
                     if p.is_file() and p.suffix in (".py", ".tsv") and "__pycache__" not in p.parts)
    assert len(sources) > 15
    for path in sources:
        rel = path.relative_to(repo).as_posix()
        importers = _importers(table, rel)
        original, stat = path.read_bytes(), path.stat()
        path.write_bytes(original + b"\n# edited by test_repro\n")
        try:
            assert set(dvc_changed(repo, env)) == importers, rel
            plan = set(snakemake_plan(repo, env)) - {"all"}
            assert plan == (downstream(repo / "dvc.yaml", importers) if importers else set()), rel
        finally:
            path.write_bytes(original)
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert dvc_changed(repo, env) == {}


# ---------------------------------------------------------------- 5. switching engines


def test_after_snakemake_dvc_has_nothing_to_do(snakemake_smoke: SnakemakeRun) -> None:
    workdir, env = snakemake_smoke.path, snakemake_smoke.env
    assert "hybridir: recorded" in snakemake_smoke.output
    assert dvc_changed(workdir, env) == {}
    assert dvc_ran(dvc(workdir, env, "repro")) == []
    assert snakemake_plan(workdir, env) == {}


def test_after_dvc_repro_snakemake_has_nothing_to_do(dvc_smoke: DvcRun) -> None:
    assert dvc_smoke.snakemake_plan == {}   # taken right after `dvc repro`, before other tests edit the run


@pytest.mark.parametrize("setting", ["experiments.seeds=[0,1]", "experiments.strategies=[hybrid]",
                                     "experiments.alpha_sweep=[0.25]"])
def test_dvc_exp_run_on_a_new_run_list_stops_before_any_work(dvc_repo: DvcRun, setting: str) -> None:
    repo, env = dvc_repo.repo, dvc_repo.env
    before = {f: (repo / f).read_bytes() for f in output_files(repo)}
    out = dvc(repo, env, "exp", "run", "-S", setting, ok=False)
    assert "Nothing was run" in out and "hybridir dvc-yaml" in out, out[-2000:]
    assert len(dvc_ran(out)) == 1, "the first stage DVC starts must stop the run"
    # DVC deletes a stage's outputs before starting it; they are in its cache, nothing was recomputed.
    dvc(repo, env, "checkout")
    assert {f: (repo / f).read_bytes() for f in output_files(repo)} == before, "a stage wrote outputs"
