"""Fetch stage: every registry file by URL, sha256-verified, preferring a local mirror directory.

The mirror is a download cache laid out like `Source.relpath`. It is looked up in this order:
the `--mirror` argument, the HYBRIDIR_MIRROR environment variable, then `../shared/mirror`
beside the working directory when it exists. Files not found there are downloaded.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import urllib.request
from pathlib import Path

from ..atomic import atomic_path
from ..errors import CannotRun, MissingInput, UserError
from .sources import Source, load_registry

DEFAULT_MIRROR = Path("..") / "shared" / "mirror"


class ChecksumError(UserError, RuntimeError):
    pass


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_mirror(explicit: str | None = None) -> Path | None:
    for candidate in (explicit, os.environ.get("HYBRIDIR_MIRROR")):
        if candidate:
            path = Path(candidate)
            if not path.is_dir():
                raise MissingInput(f"mirror directory {path} does not exist "
                                   "(check --mirror / HYBRIDIR_MIRROR)")
            return path
    return DEFAULT_MIRROR if DEFAULT_MIRROR.is_dir() else None


def fetch_one(source: Source, dest: Path, mirror: Path | None) -> str:
    """Place `source` at `dest`, verified. Returns 'present', 'mirror' or 'download'."""
    if dest.exists() and sha256_of(dest) == source.sha256:
        return "present"
    cached = mirror / source.relpath if mirror else None
    origin = str(cached) if cached and cached.is_file() else source.url
    with atomic_path(dest) as tmp:
        if cached and cached.is_file():
            shutil.copyfile(cached, tmp)
        else:
            try:
                with urllib.request.urlopen(source.url, timeout=60) as resp, open(tmp, "wb") as out:
                    shutil.copyfileobj(resp, out)
            except OSError as exc:  # URLError, timeouts: offline machines land here
                where = f"no copy at {cached}" if cached else "no mirror (set HYBRIDIR_MIRROR or --mirror)"
                raise CannotRun(f"cannot download {source.url} ({exc}); {where}") from exc
        actual = sha256_of(tmp)
        if actual != source.sha256:
            raise ChecksumError(
                f"sha256 mismatch for {source.url}\n  from:     {origin}\n"
                f"  expected: {source.sha256}\n  actual:   {actual}\n"
                "The file is corrupt or the upstream changed: delete the bad copy, "
                "or fix the entry in src/hybridir/data/sources.tsv if the change is intended.")
    return "mirror" if cached and cached.is_file() else "download"


def fetch_all(sources: list[Source], out_dir: Path, mirror: Path | None) -> dict[str, int]:
    counts: dict[str, int] = {}
    for src in sources:
        how = fetch_one(src, out_dir / src.relpath, mirror)
        counts[how] = counts.get(how, 0) + 1
    return counts


def _run(args: argparse.Namespace) -> int:
    mirror = resolve_mirror(args.mirror)
    sources = load_registry(args.registry)
    out = Path(args.out)
    # Build the whole directory aside so a failed fetch leaves no partial output.
    with atomic_path(out) as tmp:
        if out.is_dir():
            shutil.copytree(out, tmp)
        counts = fetch_all(sources, tmp, mirror)
    print(f"fetched {len(sources)} files into {out} ({counts}); mirror: {mirror}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch", help="fetch and verify every upstream data file")
    p.add_argument("--out", default="data/raw")
    p.add_argument("--mirror", default=None, help="mirror directory (default: $HYBRIDIR_MIRROR, ../shared/mirror)")
    p.add_argument("--registry", default=None, help="registry TSV (default: the packaged sources.tsv)")
    p.set_defaults(func=_run)
