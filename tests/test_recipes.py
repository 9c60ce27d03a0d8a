"""The recipe study (experiments.recipes): schema, the stage table, and the recipe stages' reads, with the
real batches and train commands on the tiny encoder."""
from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path

import pandas as pd
import pytest
import yaml

from hybridir.data.batches import read_batches
from hybridir.cli import TRACE_ENV, main
from hybridir.pipeline.config import ConfigError, Params, validate, with_recipe
from hybridir.pipeline.stages import stages

from test_train import BATCH, files, pairs, write_params  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")
RECIPES = {"bitext": {"bitext_share": 0.5, "steps": 6}, "distill": {"distill_weight": 0.2}}


def study_params(repo: Path, **experiments: object) -> dict:
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    params["experiments"].update({"recipes": copy.deepcopy(RECIPES), "recipe_seeds": [0, 1]} | experiments)
    return params


def test_schema_checks_each_recipe_with_the_train_rules(repo: Path) -> None:
    for bad, where in (({"x": {"distill_weight": -1}}, "experiments.recipes.x.distill_weight"),
                       ({"x": {"no_such_key": 1}}, "experiments.recipes.x"),
                       ({"X-1": {"steps": 2}}, "experiments.recipes"),
                       ({"x": {}}, "experiments.recipes.x")):
        with pytest.raises(ConfigError, match=f"  {where}: "):
            validate(study_params(repo, recipes=bad))


def test_with_recipe_reads_the_recipe_in_place_of_train(repo: Path) -> None:
    params = Params(validate(study_params(repo)), "params.yaml")
    p = with_recipe(params, "bitext")
    assert (p["train"]["bitext_share"], p["train"]["steps"], p["train"]["lr"]) == (0.5, 6, params.plain()["train"]["lr"])
    assert params.reads == {"experiments.recipes.bitext.bitext_share", "experiments.recipes.bitext.steps", "train.lr"}
    assert p.plain() == params.plain()   # the file's values (dvc.yaml check) stay the file's
    with pytest.raises(ConfigError, match="recipe 'nope' is not in experiments.recipes"):
        with_recipe(params, "nope")


def test_stage_table_of_a_recipe_study(repo: Path) -> None:
    params = study_params(repo, seeds=[0])
    params["experiments"]["recipes"]["same"] = {"lr": params["train"]["lr"]}   # = the default: no run
    table = {s.name: s for s in stages(params)}
    for seed in (0, 1):
        for name in RECIPES:
            tag = f"hybrid-r{name}-s{seed}"
            assert f"--recipe {name}" in table[f"train_hybrid_r{name}_s{seed}"].cmd
            assert f"--recipe {name}" in table[f"batches_hybrid_r{name}_s{seed}"].cmd
            scored = {n for n in table if n.startswith(f"evaluate_hybrid_r{name}_s{seed}_")}
            assert scored == {f"evaluate_hybrid_r{name}_s{seed}_dev", f"evaluate_hybrid_r{name}_s{seed}_dev_qa"}, tag
    assert not any("rsame" in n for n in table)
    # the default at seed 1 is outside the main grid: trained for the comparison, scored on dev only
    assert {n for n in table if n.startswith("evaluate_hybrid_s1")} == {"evaluate_hybrid_s1_dev", "evaluate_hybrid_s1_dev_qa"}
    assert "probe_hybrid_s1" not in table and "probe_hybrid_s0" in table
    # declared params: a recipe's key in place of train's
    train = table["train_hybrid_rbitext_s0"].params
    assert "experiments.recipes.bitext.steps" in train and "train.steps" not in train and "train.lr" in train
    batches = table["batches_hybrid_rbitext_s0"].params
    assert {"experiments.recipes.bitext.bitext_share", "experiments.recipes.bitext.steps"} <= set(batches)
    assert "experiments.recipes.distill.distill_weight" in table["report"].params
    assert "train.distill_weight" in table["report"].params   # make_run compares the recipe with train
    params["experiments"]["dev"] = False
    with pytest.raises(ConfigError, match="experiments.recipes needs experiments.dev: true"):
        stages(params)


def test_recipe_stages_read_exactly_their_declared_params(repo: Path, files: dict[str, Path], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """batches --recipe and train --recipe, run as the stage table writes them (tiny encoder as the base):
    the keys they read are the stage's params, and the recipe's settings took effect."""
    params = yaml.safe_load(write_params(repo, tmp_path, valid_every=3).read_text())
    params["data"]["train_langs"] = sorted(set(pd.read_parquet(files["pairs"])["lang"]))
    params["experiments"].update(recipes=copy.deepcopy(RECIPES), recipe_seeds=[0])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    (tmp_path / "data" / "train").mkdir(parents=True)
    (tmp_path / "data" / "train" / "pairs.parquet").symlink_to(files["pairs"])
    (tmp_path / "models" / "base").mkdir(parents=True)
    (tmp_path / "models" / "base" / params["encoder"]["name"]).symlink_to(files["base"], target_is_directory=True)
    table = {s.name: s for s in stages(params)}
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(TRACE_ENV, str(tmp_path / "trace"))
    for name in ("batches_hybrid_rbitext_s0", "train_hybrid_rbitext_s0"):
        argv = shlex.split(table[name].cmd)[1:]
        assert main(argv) == 0, name
        traced = [json.loads(p.read_text()) for p in (tmp_path / "trace").glob("*.json")]
        assert set(next(t["params"] for t in traced if t["argv"] == argv)) == set(table[name].params), name
    batches, settings = read_batches(tmp_path / "data" / "batches" / "hybrid-rbitext-s0.parquet")
    assert settings["steps"] == 6 and settings["bitext_share"] == 0.5 and "bitext" in set(batches["batch_type"])
    log = pd.read_csv(tmp_path / "models" / "trained" / params["encoder"]["name"] / "hybrid-rbitext-s0" / "loss.csv")
    assert log["step"].max() == 6 and "bitext" in set(log["batch_type"])
