"""The probe stage: layer-wise alignment on hand-made vectors, unit selection, and the command on a
tiny real encoder (its params reads and loaded modules against the stage table)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from hybridir.evaluate import probe
from hybridir.cli import main
from hybridir.pipeline.stages import stages

from pairs_fixture import build_pairs
from tiny_encoder import make_tiny_encoder


def test_alignment_by_layer_by_hand():
    # 3 units x 2 languages. Layer 0: each unit's translation has the same vector, units orthogonal
    # (e1, e2, e3): parallel = 1, any other unit's vector has cosine 0 -> random = 0, gap = 1.
    # Layer 1: language b is the negative of a: parallel = -1, random = 0, gap = -1.
    # Layer 2: every sentence the same vector: parallel = random = 1, gap = 0.
    eye = np.eye(3, dtype=np.float32)
    v = np.zeros((3, 3, 2, 3), dtype=np.float32)
    v[0, :, 0], v[0, :, 1] = eye, eye
    v[1, :, 0], v[1, :, 1] = eye, -eye
    v[2] = eye[0]
    got = probe.alignment_by_layer(v)
    assert got["parallel"] == pytest.approx([1, -1, 1])
    assert got["random"] == pytest.approx([0, 0, 1])
    assert got["gap"] == pytest.approx([1, -1, 0])


def test_derangement_moves_every_unit():
    for n in (2, 3, 10, 200):
        perm = probe.derangement(n)
        assert sorted(perm) == list(range(n)) and not (perm == np.arange(n)).any()


def test_parallel_units_are_held_out_ntrex_in_every_language():
    pairs = pd.DataFrame({
        "source": ["ntrex"] * 6 + ["tico19", "ntrex"],
        "group_id": ["g2", "g2", "g1", "g1", "g3", "g1", "t", "g9"],
        "lang": ["de", "en", "de", "en", "de", "es", "en", "es"],
        "query": ["a2", "b2", "a1", "b1", "a3", "c1", "x", "y"],
        "split": ["valid"] * 7 + ["train"]})
    # g3 lacks en and es, g2 lacks es: with es among the languages only g1 is complete -> too few units
    with pytest.raises(ValueError, match="at least|>= 2"):
        probe.parallel_units(pairs)
    units = probe.parallel_units(pairs[pairs["lang"] != "es"])
    assert units.index.tolist() == ["g1", "g2"] and units.columns.tolist() == ["de", "en"]
    assert units.loc["g1", "en"] == "b1"
    assert len(probe.parallel_units(pairs[pairs["lang"] != "es"], max_units=1)) == 1


def test_probe_command_on_a_tiny_encoder(mirror: Path, repo: Path, tmp_path: Path) -> None:
    pairs = build_pairs(mirror, ntrex_lines=120, tatoeba_lines=0, arcd_questions=0, valid_fraction=0.3)
    pairs.to_parquet(tmp_path / "pairs.parquet", index=False)
    model = make_tiny_encoder(pairs["query"].tolist(), tmp_path / "model")
    trace = tmp_path / "trace"
    argv = ["probe", "--params", str(repo / "params.yaml"), "--model", str(model),
            "--pairs", str(tmp_path / "pairs.parquet"), "--out", str(tmp_path / "a.json")]
    # a fresh process through the entry point, so that the trace sees the stage's imports alone
    env = {**os.environ, "HYBRIDIR_TRACE": str(trace),
           "PYTHONPATH": os.pathsep.join([str(repo / "src"), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([str(Path(sys.executable).parent / "hybridir"), *argv], env=env, check=True,
                   capture_output=True)
    body = json.loads((tmp_path / "a.json").read_text())
    assert body["layers"] == [0, 1, 2]                       # embeddings + 2 layers
    assert len(body["gap"]) == 3 and body["langs"] == sorted(body["langs"]) and len(body["langs"]) == 9
    assert body["n_sentences"] == body["n_units"] * 9
    assert body["gap"] == pytest.approx(np.subtract(body["parallel"], body["random"]), abs=2e-6)
    # the same inputs give the same bytes (no timings in the file)
    assert main(argv[:-1] + [str(tmp_path / "b.json")]) == 0
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    # what the command read and loaded is what the stage table declares
    params = yaml.safe_load((repo / "params.yaml").read_text())
    stage = next(s for s in stages(params) if s.name == "probe_zeroshot")
    record = json.loads(next(trace.glob("*.json")).read_text())
    assert set(record["params"]) == set(stage.params)
    src = repo / "src"
    loaded = {f"src/{m.replace('.', '/')}.py" if (src / f"{m.replace('.', '/')}.py").is_file()
              else f"src/{m.replace('.', '/')}/__init__.py" for m in record["modules"]}
    assert loaded == {d for d in stage.deps if d.endswith(".py")}
    assert "src/hybridir/evaluate/probe.py" in stage.deps
