"""The smoke pipeline through `snakemake --executor slurm` (profiles/slurm) on a real, single-node
Slurm cluster started for the test (slurm_cluster.py): the same results as the local run, every
job a Slurm job with the stage table's CPUs and memory.

Needs Debian's munge, slurmctld, slurmd and slurm-client (.ci/run installs them); without them the
test skips, and under CI it fails.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import yaml

pytest.register_assert_rewrite("pipeline_helpers")  # before the import: it is also a plugin
from pipeline_helpers import (SnakemakeRun, git_init, make_workdir, require_mirror, run_differences,  # noqa: E402
                              smoke_params, snakemake, snakemake_plan)
from slurm_cluster import Cluster, local_slurm  # noqa: E402

from hybridir.pipeline.stages import stages  # noqa: E402

pytest_plugins = ["pipeline_helpers"]
pytestmark = pytest.mark.slow


def slurm_args(cluster: Cluster) -> tuple[str, ...]:
    """What a cluster user types after `snakemake --profile profiles/slurm`, for this cluster: its
    partition and no account (it has no accounting database, so the executor reads job states
    from squeue, and need not wait 40 s before the first look)."""
    return ("--profile", "profiles/slurm", "--default-resources", f"slurm_partition={cluster.partition}",
            "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "5")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with local_slurm(tmp_path_factory.mktemp("slurm")) as running:
        yield running


def slurm_jobs(cluster: Cluster) -> dict[str, tuple[str, str, int, str]]:
    """Slurm job id -> (rule, state, CPUs, memory) for every job the cluster has seen (squeue keeps
    finished ones for MinJobAge; the executor names the rule in the job's comment)."""
    out = subprocess.run(["squeue", "--states=all", "--noheader", "--format=%i|%k|%T|%C|%m"],
                         env=cluster.env, capture_output=True, text=True, check=True).stdout
    jobs = {}
    for line in out.splitlines():
        job_id, comment, state, cpus, mem = line.split("|")
        jobs[job_id] = (comment.removeprefix("rule_"), state, int(cpus), mem)
    return jobs


def test_smoke_pipeline_on_slurm_equals_the_local_run(cluster: Cluster, snakemake_smoke: SnakemakeRun,
                                                      smoke_root: Path, smoke_source: Path) -> None:
    params = smoke_params(smoke_source)
    wd = make_workdir(smoke_root / "slurm", require_mirror(), params, smoke_source)
    env = cluster.env_for(wd.env)
    git_init(wd.path, env)
    rules = set(snakemake_plan(wd.path, env)) - {"all"}
    before = set(slurm_jobs(cluster))

    output = snakemake(wd.path, env, *slurm_args(cluster)).stdout

    assert run_differences(snakemake_smoke.path, wd.path) == []
    submitted = dict(re.findall(r"^Job \d+ has been submitted with SLURM jobid (\d+) "
                                r"\(log: .*/rule_(\w+)/\d+\.log\)", output, flags=re.M))
    jobs = {i: job for i, job in slurm_jobs(cluster).items() if i not in before}
    assert set(jobs) == set(submitted), "the executor's job ids are the cluster's"
    assert sorted(rule for rule, *_ in jobs.values()) == sorted(rules), "one Slurm job per stage"
    table = {st.name: st for st in stages(yaml.safe_load((wd.path / "params.yaml").read_text()))}
    for rule, state, cpus, mem in jobs.values():
        assert state == "COMPLETED", rule
        assert (cpus, mem) == (table[rule].threads, f"{table[rule].mem_mb}M"), rule
