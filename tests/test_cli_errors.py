"""`hybridir` reports known user errors in one line (exit 2); any other exception is a bug and
keeps its traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hybridir.data import batches
from hybridir.cli import main


def hybridir(*argv: str, patch: str = "") -> subprocess.CompletedProcess[str]:
    """The command line in a fresh interpreter, after running the Python statements in `patch`."""
    code = f"import sys\n{patch}\nfrom hybridir.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300)


def batches_argv(params: Path, pairs: Path, out: Path) -> list[str]:
    return ["batches", "--params", str(params), "--pairs", str(pairs), "--strategy", "xy", "--seed", "0",
            "--out", str(out)]


def test_user_errors_are_one_line_and_exit_2(repo: Path, tmp_path: Path) -> None:
    cases = {
        "none.yaml": batches_argv(tmp_path / "none.yaml", tmp_path / "pairs.parquet", tmp_path / "b.parquet"),
        "none.parquet": batches_argv(repo / "params.yaml", tmp_path / "none.parquet", tmp_path / "b.parquet"),
        "no-eval-dir": ["evaluate", "--params", str(repo / "params.yaml"), "--embeddings", str(tmp_path / "emb"),
                        "--eval-data", str(tmp_path / "no-eval-dir"), "--out", str(tmp_path / "ev"),
                        "--metrics", str(tmp_path / "m.json")],
    }
    for missing, argv in cases.items():
        proc = hybridir(*argv)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, proc.stderr
        assert len(lines) == 1 and lines[0].startswith(f"hybridir {argv[0]}: error: "), proc.stderr
        assert missing in lines[0]


def test_unexpected_errors_keep_their_traceback(repo: Path, tmp_path: Path) -> None:
    patch = "import hybridir.data.batches as b\ndef bug(path):\n    raise KeyError('bug')\nb.read_pairs = bug"
    proc = hybridir(*batches_argv(repo / "params.yaml", tmp_path / "p.parquet", tmp_path / "b.parquet"), patch=patch)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "KeyError: 'bug'" in proc.stderr, proc.stderr


@pytest.mark.parametrize("bug", [KeyError("bug"), ValueError("bug"), RuntimeError("bug"), FileNotFoundError("bug")])
def test_builtin_exceptions_propagate(bug: Exception, repo: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def read_pairs(path: object) -> None:
        raise bug

    monkeypatch.setattr(batches, "read_pairs", read_pairs)
    with pytest.raises(type(bug), match="bug"):
        main(batches_argv(repo / "params.yaml", tmp_path / "p.parquet", tmp_path / "b.parquet"))
