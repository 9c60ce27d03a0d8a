"""Atomic writes: an output appears complete or not at all, never half-written."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds.

    Works for files and directories: the block creates whatever it likes at the
    yielded path. On error the temporary is removed and `path` is left untouched.
    """
    with atomic_outputs(path) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_outputs(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Several outputs that must appear together: all are replaced at the end, or none.

    Each output is staged in a hidden temporary directory beside it (same file system, so the
    renames are cheap and atomic one by one). The commit moves every old output aside, then moves
    every new one in; an error on the way restores the old outputs. Only a crash of the process
    mid-commit can leave a mix, with the old outputs kept in the hidden directories.
    """
    finals = [Path(p) for p in paths]
    with contextlib.ExitStack() as cleanup:
        roots = []
        for final in finals:
            final.parent.mkdir(parents=True, exist_ok=True)
            root = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
            cleanup.callback(shutil.rmtree, root, ignore_errors=True)
            (root / "new").mkdir()
            (root / "old").mkdir()
            roots.append(root)
        # the staged path keeps the output's name: writers may choose a format by its suffix
        staged = [root / "new" / final.name for root, final in zip(roots, finals)]
        yield staged
        for tmp, final in zip(staged, finals):
            if not _exists(tmp):
                raise FileNotFoundError(f"atomic write of {final} produced nothing")
        _commit(finals, staged, [root / "old" / final.name for root, final in zip(roots, finals)])


def _commit(finals: list[Path], staged: list[Path], aside: list[Path]) -> None:
    """Move the old outputs to `aside` and the `staged` ones in; on any error, undo both."""
    moved_aside: list[int] = []
    moved_in: list[int] = []
    try:
        for i, final in enumerate(finals):
            if _exists(final):
                os.replace(final, aside[i])
                moved_aside.append(i)
        for i, final in enumerate(finals):
            os.replace(staged[i], final)
            moved_in.append(i)
    except BaseException:
        for i in moved_in:
            _remove(finals[i])
        for i in moved_aside:
            os.replace(aside[i], finals[i])
        raise


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
