"""Atomic writes: several outputs are replaced all together or not at all, without litter."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from hybridir.atomic import atomic_outputs, atomic_path


def write_outputs(out: Path, tag: str) -> None:
    with atomic_outputs(out / "a.txt", out / "b", out / "c.json") as (a, b, c):
        a.write_text(tag)
        b.mkdir()
        (b / "inner.txt").write_text(tag)
        c.write_text(tag)


def state(out: Path) -> dict[str, str | None]:
    files = {"a.txt": out / "a.txt", "b": out / "b" / "inner.txt", "c.json": out / "c.json"}
    return {name: p.read_text() if p.exists() else None for name, p in files.items()}


def fail_on_call(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    real = os.replace
    calls = [0]

    def replace(src: object, dst: object) -> None:
        calls[0] += 1
        if calls[0] == n:
            raise OSError(f"injected failure on rename {n}")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


# three outputs: replacing old ones takes 3 renames aside then 3 in; fresh ones only the 3 in
@pytest.mark.parametrize("old,fail_at", [(True, n) for n in range(1, 7)] + [(False, n) for n in range(1, 4)])
def test_failure_mid_commit_keeps_all_old_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  old: bool, fail_at: int) -> None:
    if old:
        write_outputs(tmp_path, "old")
    before = state(tmp_path)
    fail_on_call(monkeypatch, fail_at)
    with pytest.raises(OSError, match="injected"):
        write_outputs(tmp_path, "new")
    assert state(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == (["a.txt", "b", "c.json"] if old else [])


def test_success_replaces_all_and_leaves_no_litter(tmp_path: Path) -> None:
    write_outputs(tmp_path, "old")
    write_outputs(tmp_path, "new")
    assert state(tmp_path) == {"a.txt": "new", "b": "new", "c.json": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b", "c.json"]


def test_error_in_the_block_or_missing_output_changes_nothing(tmp_path: Path) -> None:
    write_outputs(tmp_path, "old")
    with pytest.raises(RuntimeError):
        with atomic_outputs(tmp_path / "a.txt", tmp_path / "c.json") as (a, c):
            a.write_text("new")
            c.write_text("new")
            raise RuntimeError("stage failed")
    with pytest.raises(FileNotFoundError, match="produced nothing"):
        with atomic_path(tmp_path / "a.txt") as a:
            pass
    assert state(tmp_path) == {"a.txt": "old", "b": "old", "c.json": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b", "c.json"]
