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
