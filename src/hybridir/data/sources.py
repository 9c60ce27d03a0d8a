"""The registry of upstream files (sources.tsv): canonical URL, sha256, size, licence, role."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

RAW_GITHUB_HOST = "raw.githubusercontent.com"


@dataclass(frozen=True)
class Source:
    url: str
    sha256: str
    bytes: int
    license: str
    role: str

    @property
    def relpath(self) -> PurePosixPath:
        """Path of this file below a mirror or raw-data directory, derived from the URL.

        https://raw.githubusercontent.com/OWNER/REPO/COMMIT/PATH -> github/OWNER/REPO/COMMIT/PATH
        """
        return url_relpath(self.url)


def url_relpath(url: str) -> PurePosixPath:
    parsed = urlparse(url)
    parts = PurePosixPath(parsed.path.lstrip("/"))
    if parsed.netloc == RAW_GITHUB_HOST:
        return PurePosixPath("github") / parts
    return PurePosixPath(parsed.netloc) / parts


def load_registry(path: str | Path | None = None) -> list[Source]:
    """Read the registry (the packaged sources.tsv unless `path` is given)."""
    text = (Path(path).read_text(encoding="utf-8") if path
            else resources.files("hybridir").joinpath("data/sources.tsv").read_text(encoding="utf-8"))
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
    return [Source(r["url"], r["sha256"].lower(), int(r["bytes"]), r["license"], r["role"]) for r in rows]


def find(registry: list[Source], suffix: str) -> Source:
    """The single registry entry whose URL ends with `suffix` (e.g. 'xquad-r/en.json')."""
    hits = [s for s in registry if s.url.endswith(suffix)]
    if len(hits) != 1:
        raise KeyError(f"expected one source ending with {suffix!r} in sources.tsv, found {len(hits)}")
    return hits[0]


def local_path(raw_dir: str | Path, source: Source) -> Path:
    """Where the fetch stage put `source` below `raw_dir`."""
    return Path(raw_dir) / source.relpath
