"""Shared test fixtures: repository root and the offline mirror beside it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

pytest.register_assert_rewrite("pipeline_helpers")   # before the import, so its asserts explain themselves
from pipeline_helpers import require_mirror  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def runner_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Converted encoders (modeling.runner_cache) go to the session's scratch, not ~/.cache: no test
    sees a model converted by an earlier session."""
    path = tmp_path_factory.mktemp("runner-cache")
    before = os.environ.get("HYBRIDIR_CACHE")
    os.environ["HYBRIDIR_CACHE"] = str(path)
    yield path
    if before is None:
        os.environ.pop("HYBRIDIR_CACHE", None)
    else:
        os.environ["HYBRIDIR_CACHE"] = before


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def mirror() -> Path:
    return require_mirror()


@pytest.fixture
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One torch thread here and in the processes a test starts: on a shared 2-core CPU, OpenMP
    spinning makes more threads slower (up to ~50x for the tiny model), not faster."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
