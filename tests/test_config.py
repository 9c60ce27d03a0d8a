"""Parameter validation: a wrong value stops every entry point before any work, naming the key
and what is allowed; and the workflow passes `snakemake --lint`."""
from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from hybridir import cli
from hybridir.pipeline.config import ConfigError, load_params, validate

pytest.register_assert_rewrite("pipeline_helpers")
from pipeline_helpers import (OUTPUT_ROOTS, REPO, Workdir, make_workdir, require_mirror,  # noqa: E402
                              set_dotted, smoke_params, snakemake)


def _misspell(params: dict[str, Any]) -> None:
    params["train"]["learning_rate"] = params["train"].pop("lr")


def _set(dotted: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda params: set_dotted(params, dotted, value)


# case -> (how to break the params, what the message must say: the key, then what is allowed)
BAD = {
    "alpha_above_1": (_set("train.alpha", 1.5), ["train.alpha", "1.5", "[0, 1]"]),
    "unknown_train_language": (_set("data.train_langs", ["de", "en", "fr"]),
                               ["data.train_langs", "'fr'", "'de', 'el', 'en'"]),
    "batch_size_0": (_set("train.batch_size", 0), ["train.batch_size", "0", ">= 2"]),
    "misspelt_key": (_misspell, ["train", "'learning_rate' was unexpected", "'lr' is a required property"]),
}


def _bad_params(case: str) -> dict[str, Any]:
    params = copy.deepcopy(smoke_params())
    BAD[case][0](params)
    return params


def _write(path: Path, params: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def _says(message: str, case: str) -> None:
    for part in BAD[case][1]:
        assert part in message, f"{part!r} missing from:\n{message}"


def test_shipped_parameter_files_are_valid() -> None:
    for path in [REPO / "params.yaml", *sorted((REPO / "config").glob("*.yaml"))]:
        load_params(path)


@pytest.mark.parametrize("case", sorted(BAD))
def test_schema_names_key_and_allowed_range(case: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(_bad_params(case), "bad.yaml")
    _says(str(err.value), case)
    assert "bad.yaml" in str(err.value)


def _stage_commands(params: Path, tmp: Path) -> dict[str, list[str]]:
    """Every subcommand that reads params, with inputs that do not exist: only validation can answer."""
    none = str(tmp / "missing")
    out = str(tmp / "out")
    p = ["--params", str(params)]
    return {
        "eval-data": ["eval-data", *p, "--raw", none, "--out", out],
        "train-data": ["train-data", *p, "--raw", none, "--out", out],
        "import-encoder": ["import-encoder", *p, "--out", out],
        "batches": ["batches", *p, "--pairs", none, "--strategy", "hybrid", "--seed", "0", "--out", out],
        "train": ["train", *p, "--base", none, "--pairs", none, "--batches", none, "--out", out],
        "encode": ["encode", *p, "--model", none, "--eval-data", none, "--out", out],
        "evaluate": ["evaluate", *p, "--embeddings", none, "--eval-data", none, "--out", out,
                     "--metrics", str(tmp / "metrics.json")],
        "beir": ["beir", *p, "--raw", none, "--model", none, "--dataset", "nfcorpus", "--out", out],
        "probe": ["probe", *p, "--model", none, "--pairs", none, "--out", out],
        "report": ["report", *p, "--results", none, "--out", out],
        "dvc-yaml": ["dvc-yaml", *p, "--out", out],
    }


@pytest.mark.parametrize("case", sorted(BAD))
def test_every_stage_command_refuses_bad_params_first(case: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    params = _write(tmp_path / "bad.yaml", _bad_params(case))
    commands = _stage_commands(params, tmp_path)
    parser = cli.build_parser()
    registered = set(next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices)
    # fetch, domain-data and dev-data read no params
    assert registered - {"fetch", "domain-data", "dev-data"} <= set(commands), "a stage command is not covered here"
    for name, argv in commands.items():
        assert cli.main(argv) == 2, name
        err = capsys.readouterr().err
        assert err.startswith(f"hybridir {name}: error: invalid parameters in {params}"), err
        _says(err, case)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"], f"{name} wrote something"


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory: pytest.TempPathFactory) -> Workdir:
    return make_workdir(tmp_path_factory.mktemp("config_repo"), require_mirror())


def _nothing_written(workdir: Path) -> None:
    made = [d for d in (*OUTPUT_ROOTS, "logs", "benchmarks") if (workdir / d).exists()]
    assert made == [], f"the workflow wrote {made}"


@pytest.mark.parametrize("case", sorted(BAD))
def test_snakemake_refuses_bad_params_before_any_job(case: str, workflow_copy: Workdir) -> None:
    workdir, env = workflow_copy.path, workflow_copy.env
    _write(workdir / "bad.yaml", _bad_params(case))
    for args in (["--dry-run", "--configfile", "bad.yaml"], ["--configfile", "bad.yaml"]):
        proc = snakemake(workdir, env, *args, ok=False, cores=1)
        assert "invalid parameters in bad.yaml" in proc.stdout, proc.stdout[-3000:]
        _says(proc.stdout, case)
        _nothing_written(workdir)


def test_snakemake_refuses_a_bad_params_yaml(workflow_copy: Workdir) -> None:
    """The default file too (Snakefile's `configfile:`), not only one given with --configfile."""
    workdir, env = workflow_copy.path, workflow_copy.env
    original = (workdir / "params.yaml").read_bytes()
    try:
        params = yaml.safe_load(original)
        _misspell(params)
        _write(workdir / "params.yaml", params)
        proc = snakemake(workdir, env, "--dry-run", ok=False, cores=1)
        _says(proc.stdout, "misspelt_key")
    finally:
        (workdir / "params.yaml").write_bytes(original)
    _nothing_written(workdir)


def test_snakemake_refuses_a_partial_configfile(workflow_copy: Workdir) -> None:
    """Snakemake merges --configfile over params.yaml, but the stages read the given file alone:
    a partial file must be refused, not validated through the merge and broken at run time."""
    workdir, env = workflow_copy.path, workflow_copy.env
    _write(workdir / "partial.yaml", {"train": {"alpha": 0.3}})
    proc = snakemake(workdir, env, "--dry-run", "--configfile", "partial.yaml", ok=False, cores=1)
    assert "invalid parameters in partial.yaml" in proc.stdout
    assert "'data' is a required property" in proc.stdout
    _nothing_written(workdir)


def test_snakemake_lint_is_clean(workflow_copy: Workdir) -> None:
    proc = snakemake(workflow_copy.path, workflow_copy.env, "--lint", ok=None, cores=1)
    assert proc.returncode == 0, proc.stdout


def test_params_record_the_leaves_their_readers_look_at() -> None:
    import json

    params = load_params(REPO / "config" / "smoke.yaml")
    assert params.reads == set() and params.source.endswith("smoke.yaml")
    params["train"]["lr"]
    params["data"].get("seed")
    params["data"].get("no_such_key")
    list(params["experiments"])            # key names only: not a read of the values
    assert params.reads == {"train.lr", "data.seed"}
    json.dumps(params["encoder"])          # serialising reads every leaf
    assert {"encoder.name", "encoder.pooling", "encoder.max_length"} <= params.reads
    params.reads.clear()
    copied = dict(params["evaluate"])      # so does copying a section
    assert {f"evaluate.{k}" for k in copied} == params.reads
    params.reads.clear()
    params["train"]["alpha"] = 0.3         # sections are shared, so edits stick
    assert params["train"]["alpha"] == 0.3 and params.reads == {"train.alpha"}
    params.reads.clear()
    plain = params.plain()                 # for exact-dict consumers; reads nothing
    assert type(plain["train"]) is dict and plain["train"]["alpha"] == 0.3 and params.reads == set()
