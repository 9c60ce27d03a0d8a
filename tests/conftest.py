"""Shared test fixtures: repository root and the offline mirror beside it."""
from __future__ import annotations

import os
from pathlib import Path

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
