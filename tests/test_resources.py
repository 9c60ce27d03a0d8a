"""Job resources: the params' resources section, through the stage table, to Snakemake and Slurm.

They are scheduling, not results: no stage declares or reads them. Threads also size torch's
thread pool (Snakemake exports OMP_NUM_THREADS = the rule's threads).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hybridir.pipeline.config import load_params
from hybridir.pipeline.stages import stages

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("params_file", ["params.yaml", "config/smoke.yaml", "config/paper.yaml"])
def test_stage_resources_come_from_the_params_resources_section(repo: Path, params_file: str) -> None:
    params = load_params(repo / params_file)
    resources = params.plain()["resources"]
    for st in stages(params, params_file):
        want = resources.get(st.command, resources["default"])
        assert (st.threads, st.mem_mb, st.runtime, st.gpus) == (
            want["threads"], want["mem_mb"], want["runtime"], want["gpus"]), st.name
        assert not [p for p in st.params if p.startswith("resources.")], f"{st.name} declares resources"
    assert not [k for k in params.reads if k.startswith("resources.")], "building the table read resources"


def test_smoke_jobs_fit_two_cores(repo: Path) -> None:
    """The tests run the smoke pipeline with --cores 2 and on a 2-CPU Slurm node."""
    assert max(st.threads for st in stages(load_params(repo / "config/smoke.yaml"))) <= 2


def _dry_run_jobs(workdir: Path, *args: str) -> dict[str, dict[str, str]]:
    """rule -> its resources (name -> value as printed) for each job of a forced dry run."""
    proc = subprocess.run([str(BIN / "snakemake"), "--dry-run", "--forceall", *args], cwd=workdir,
                          capture_output=True, text=True, check=True)
    jobs, rule = {}, None
    for line in (proc.stdout + proc.stderr).splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):", line):
            rule = m.group(1)
        elif rule and (m := re.match(r"^\s+resources: (.*)$", line)):
            jobs[rule] = dict(item.split("=", 1) for item in m.group(1).split(", "))
            rule = None
    return jobs


def test_paper_profile_on_slurm_asks_gpus_for_train_and_encode(repo: Path) -> None:
    """The cluster user's dry run (README): no Slurm needed to see what each job would ask for."""
    jobs = _dry_run_jobs(repo, "--profile", "profiles/slurm", "--configfile", "config/paper.yaml")
    table = {st.name: st for st in stages(load_params(repo / "config/paper.yaml"), "config/paper.yaml")}
    assert set(jobs) - {"all"} == set(table)
    gpu_jobs = {table[r].command for r, res in jobs.items() if int(res.get("gpu", 0)) > 0}
    assert gpu_jobs == {"train", "encode"}   # beir too, when experiments.beir lists datasets
    for rule, st in table.items():
        res = jobs[rule]
        assert (int(res["gpu"]), int(res["mem_mb"]), int(res["runtime"])) == (st.gpus, st.mem_mb, st.runtime), rule
        assert res["slurm_partition"] == res["slurm_account"] == "CHANGE_ME"   # the profile's placeholders
    assert sum(table[r].command == "train" for r in jobs if r in table) == 3   # one per strategy


@pytest.mark.slow
def test_torch_uses_the_rules_threads(tmp_path: Path, mirror: Path) -> None:
    """A job's torch pool is its rule's threads, not the machine's cores: with encode at 1 thread
    under --cores 2, the encode job reports torch_threads 1 (its meta.json)."""
    from pipeline_helpers import git_init, make_workdir, set_dotted, smoke_params, snakemake

    params = smoke_params()
    set_dotted(params, "resources.encode.threads", 1)
    wd = make_workdir(tmp_path / "run", mirror, params)
    git_init(wd.path, wd.env)   # a DVC repository needs git (the run's onsuccess records dvc.lock)
    embeddings = f"results/{params['encoder']['name']}/zeroshot/xquad_r/embeddings"
    snakemake(wd.path, wd.env, embeddings, cores=2)   # fetch, eval_data, import_encoder, then encode
    assert json.loads((wd.path / embeddings / "meta.json").read_text())["torch_threads"] == 1
