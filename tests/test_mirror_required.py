"""Without the offline data mirror, a test that needs it skips locally but fails under CI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

NEEDS_MIRROR = "tests/test_evaldata.py::test_relevant_sentence_holds_the_answer"


def pytest_without_mirror(repo: Path, tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"HYBRIDIR_MIRROR": str(tmp_path / "no-mirror")}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", NEEDS_MIRROR],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("ci", ["true", "1"])
def test_ci_fails_without_the_mirror(repo: Path, tmp_path: Path, ci: str) -> None:
    proc = pytest_without_mirror(repo, tmp_path, ci)
    assert proc.returncode == 1, proc.stdout
    assert f"offline data mirror {tmp_path / 'no-mirror'} not found" in proc.stdout, proc.stdout
    assert "set HYBRIDIR_MIRROR" in proc.stdout and "skipped" not in proc.stdout


def test_local_run_skips_without_the_mirror(repo: Path, tmp_path: Path) -> None:
    proc = pytest_without_mirror(repo, tmp_path, None)
    assert proc.returncode == 0, proc.stdout
    assert "1 skipped" in proc.stdout
