"""Safety: nothing downloaded is unpickled, and models are stored as safetensors.

The code check reads the syntax tree of every module in src/ and scripts/ (so formatting or line
breaks cannot hide a call); the artifact check looks at the smoke run's model directories.
"""
from __future__ import annotations

import ast

import numpy as np
import pytest
from safetensors import safe_open

pytest.register_assert_rewrite("pipeline_helpers")  # before the import: it is also a plugin
from pipeline_helpers import REPO, DvcRun

pytest_plugins = ["pipeline_helpers"]

UNPICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
UNPICKLING_CALLS = {"read_pickle", "Unpickler"}          # pandas.read_pickle, pickle.Unpickler
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".joblib", ".ckpt"}


def _name(node: ast.AST) -> str:
    """Dotted name of a call target: torch.load, np.load, pickle.loads, ..."""
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def _keyword(call: ast.Call, name: str) -> object:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<expression>"
    return None


def unsafe_loads(source: str, where: str = "<string>") -> list[str]:
    """Every place `source` could run pickle on data: the rules of this project, as findings."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = f"{where}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{line}: imports {n}" for n in names if n.split(".")[0] in UNPICKLING_MODULES]
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        last = name.rsplit(".", 1)[-1]
        if name.split(".")[0] in UNPICKLING_MODULES or last in UNPICKLING_CALLS:
            found.append(f"{line}: {name}() unpickles")
        if name == "torch.load" and _keyword(node, "weights_only") is not True:
            found.append(f"{line}: torch.load without weights_only=True")
        if _keyword(node, "weights_only") is False:
            found.append(f"{line}: {name}(weights_only=False)")
        if _keyword(node, "allow_pickle") not in (None, False):
            found.append(f"{line}: {name}(allow_pickle={_keyword(node, 'allow_pickle')})")
        if _keyword(node, "trust_remote_code") not in (None, False):
            found.append(f"{line}: {name}(trust_remote_code=...) runs downloaded code")
        if _keyword(node, "use_safetensors") is False:
            found.append(f"{line}: {name}(use_safetensors=False)")
    return found


def test_the_checker_finds_each_unsafe_pattern() -> None:
    bad = """
import pickle
from joblib import load
import torch, numpy as np, pandas as pd
torch.load(path)
torch.load(path, weights_only=False)
np.load(path, allow_pickle=True)
pd.read_pickle(path)
AutoModel.from_pretrained(hub_id, trust_remote_code=True)
AutoModel.from_pretrained(hub_id, use_safetensors=False)
"""
    found = unsafe_loads(bad)
    for what in ("imports pickle", "imports joblib", "torch.load without weights_only=True",
                 "weights_only=False", "allow_pickle=True", "read_pickle", "trust_remote_code",
                 "use_safetensors=False"):
        assert any(what in f for f in found), what
    safe = "torch.load(p, weights_only=True)\nnp.load(p, allow_pickle=False)\nnp.load(p)\n"
    assert unsafe_loads(safe) == []


def test_no_unpickling_in_the_code() -> None:
    files = sorted((REPO / "src").rglob("*.py")) + sorted((REPO / "scripts").glob("*.py"))
    assert files
    found = [f for path in files for f in unsafe_loads(path.read_text(encoding="utf-8"),
                                                        str(path.relative_to(REPO)))]
    assert found == []


@pytest.mark.slow
def test_smoke_models_are_safetensors_and_outputs_hold_no_pickle(dvc_smoke: DvcRun) -> None:
    repo = dvc_smoke.repo
    model_dirs = sorted(p.parent for p in (repo / "models").rglob("modules.json"))   # sentence-transformers dirs
    assert len(model_dirs) == 4   # the imported base encoder and three trained ones
    for model_dir in model_dirs:
        weights = model_dir / "model.safetensors"
        assert weights.is_file(), model_dir
        with safe_open(str(weights), framework="pt") as f:   # a real safetensors file
            assert len(list(f.keys())) > 100
    outputs = [p for root in ("data", "models", "results", "reports") for p in (repo / root).rglob("*")]
    assert not [p for p in outputs if p.suffix in PICKLE_SUFFIXES]
    arrays = [p for p in outputs if p.suffix == ".npy"]
    assert arrays
    for path in arrays:   # plain numeric arrays: readable without pickle
        assert np.load(path, allow_pickle=False).dtype.kind == "f", path
