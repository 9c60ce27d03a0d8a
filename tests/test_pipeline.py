"""The Snakemake and DVC DAGs are one: both come from hybridir.pipeline.stages()."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from hybridir.pipeline.config import load_params
from hybridir.pipeline.stages import code_deps, render_dvc_yaml, runs, stages

BIN = Path(sys.executable).parent


def test_dvc_yaml_is_generated_from_stage_table(repo: Path) -> None:
    committed = (repo / "dvc.yaml").read_text()
    generated = render_dvc_yaml(load_params(repo / "params.yaml"))
    assert committed == generated, "dvc.yaml is stale: run `hybridir dvc-yaml`"


def _snakemake_jobs(workdir: Path, *extra: str) -> dict[str, str]:
    """rule name -> shell command, from a forced dry run of the real workflow."""
    proc = subprocess.run(
        [str(BIN / "snakemake"), "--dry-run", "--forceall", "--printshellcmds", "--cores", "1", *extra],
        cwd=workdir, capture_output=True, text=True, check=True)
    jobs, rule = {}, None
    for line in (proc.stdout + proc.stderr).splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):", line):
            rule = m.group(1)
        elif rule and (m := re.match(r"^\s*Shell command: (.*)$", line)):
            jobs[rule] = m.group(1).strip()
            rule = None
    return jobs


def test_snakemake_runs_the_same_commands_as_dvc(repo: Path) -> None:
    dvc = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    jobs = _snakemake_jobs(repo)
    jobs.pop("all", None)
    assert set(jobs) == set(dvc), "Snakemake rules and DVC stages differ"
    for name, cmd in jobs.items():
        assert cmd.split(" > logs/")[0] == dvc[name]["cmd"], name


def test_stage_params_exist_and_outputs_are_unique(repo: Path) -> None:
    params = load_params(repo / "params.yaml")
    table = stages(params)
    outs = [o for s in table for o in s.all_outs]
    assert len(outs) == len(set(outs))
    produced = {o for s in table for o in s.all_outs}
    for s in table:
        for d in s.deps:
            assert d in produced or (repo / d).exists(), f"{s.name}: dependency {d} is neither produced nor in the repo"


def test_sweep_points_equal_to_the_main_setting_reuse_the_main_run(repo: Path) -> None:
    params = load_params(repo / "params.yaml")
    params["train"]["alpha"] = 0.5
    params["experiments"].update(strategies=["xx_mono", "xy", "hybrid"], seeds=[0, 1],
                                 alpha_sweep=[0, 0.5, 1], data_fractions=[0.25, 1.0])
    tags = [r.tag for r in runs(params)]
    assert len(tags) == len(set(tags))
    assert not any("-a" in t or "-f1-" in t for t in tags)   # 0.5 = main; 0 = xy; 1 = xx_mono
    assert {"xy-f0.25-s0", "hybrid-s1"} <= set(tags)
    assert len(tags) == 3 * 2 + 3 * 2   # main grid and one new fraction
    params["experiments"].update(strategies=["hybrid"], alpha_sweep=[0, 0.25, 1], data_fractions=[])
    assert [r.tag for r in runs(params)] == ["hybrid-s0", "hybrid-s1", "xy-s0", "xy-s1", "hybrid-a0.25-s0",
                                             "hybrid-a0.25-s1", "xx_mono-s0", "xx_mono-s1"]
    names = [s.name for s in stages(params)]
    assert len(names) == len(set(names)), "a deduplicated run must give one set of stages"


def _names(paths: tuple[str, ...]) -> set[str]:
    return {p.removeprefix("src/hybridir/") for p in paths if p.startswith("src/hybridir/")}


def test_code_deps_follow_every_kind_of_import(tmp_path: Path) -> None:
    pkg = tmp_path / "hybridir"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "", "cli.py": "import os\n",
        "entry.py": "from . import plain as p\nfrom .sub.deep import f\n\ndef run():\n"
                    "    from .lazy import g\n    import hybridir.absolute\n",
        "plain.py": "from .atomic import x\n", "atomic.py": "", "lazy.py": "", "absolute.py": "",
        "unused.py": "import entry\n", "sub/__init__.py": "", "sub/deep.py": "from ..data import y\n",
        "data.py": "from importlib import resources\nT = resources.files('hybridir').joinpath('t.tsv')\n",
        "t.tsv": "a\tb\n",
    }
    for rel, text in files.items():
        (pkg / rel).write_text(text)
    deps = code_deps("entry", pkg)
    assert _names(deps) == {"__init__.py", "cli.py", "entry.py", "plain.py", "atomic.py", "lazy.py",
                            "absolute.py", "sub/__init__.py", "sub/deep.py", "data.py", "t.tsv"}
    # a command's module in a sub-package: importing it runs the package's __init__.py
    (pkg / "sub" / "cmd.py").write_text("import os\n")
    assert _names(code_deps("sub.cmd", pkg)) == {"__init__.py", "cli.py", "sub/__init__.py", "sub/cmd.py"}


def test_stage_code_deps_include_what_was_missing_by_hand(repo: Path) -> None:
    """The hand-written lists lacked these (issue 10); derived from the imports they cannot."""
    table = {s.name: _names(s.deps) for s in stages(load_params(repo / "config" / "smoke.yaml"))}
    assert {"data/batches.py", "model/encoder_dir.py", "pipeline/config.py", "atomic.py"} <= table["train_hybrid_s0"]
    # How texts are encoded fast (modeling.py) is not the model format: it re-runs encodes only.
    assert "model/modeling.py" not in table["train_hybrid_s0"] and "model/modeling.py" not in table["import_encoder"]
    assert {"evaluate/encode.py", "evaluate/search.py", "evaluate/metrics.py"} <= table["evaluate_hybrid_s0_xquad_r"]
    assert {"pipeline/stages.py", "evaluate/metrics.py", "evaluate/significance.py"} <= table["report"]
    assert {"data/sources.py", "data/mmarco.py", "data/sources.tsv", "data/evaldata.py"} <= table["train_data"]
    assert "model/modeling.py" not in table["batches_hybrid_s0"]
    assert "train/trainer.py" not in table["encode_zeroshot_xquad_r"]
    for name, deps in table.items():
        assert {"cli.py", "__init__.py"} <= deps, name
        assert "pipeline/stages.py" not in deps or name == "report", f"{name}: the stage table is not its code"


def test_settings_reach_only_the_stages_that_use_them(repo: Path) -> None:
    """Encoding settings never re-import or re-train; training settings never re-fetch or re-import."""
    params = load_params(repo / "params.yaml")
    declared = {s.name: set(s.params) for s in stages(params)}
    upstream_of_encode = [n for n in declared if n in ("fetch", "eval_data", "train_data", "import_encoder")
                          or n.startswith(("batches_", "train_"))]
    encoding = {"encoder.max_length"} | {f"evaluate.{k}" for k in params["evaluate"]}
    training = {f"train.{k}" for k in params["train"]}
    for name in upstream_of_encode:
        assert not declared[name] & encoding, name
    for name in ("fetch", "eval_data", "train_data", "import_encoder"):
        assert not declared[name] & training, name
    assert declared["import_encoder"] == {"encoder.source", "encoder.query_prefix", "encoder.passage_prefix",
                                          "encoder.pooling"}   # hub_id and revision: only for source: hub
    params["encoder"]["source"] = "hub"
    hub = next(s for s in stages(params) if s.name == "import_encoder")
    assert {"encoder.hub_id", "encoder.revision"} <= set(hub.params)
