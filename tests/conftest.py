"""Shared test fixtures: repository root and the offline mirror beside it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def mirror_dir() -> Path | None:
    env = os.environ.get("HYBRIDIR_MIRROR")
    path = Path(env) if env else REPO.parent / "shared" / "mirror"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def mirror() -> Path:
    path = mirror_dir()
    if path is None:
        pytest.skip("offline data mirror not found (set HYBRIDIR_MIRROR or place ../shared/mirror)")
    return path
