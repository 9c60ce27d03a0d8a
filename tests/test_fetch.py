"""Fetch stage: files come verified (sha256) from the mirror; a bad copy stops it, naming the URL and
both hashes, and leaves the raw directory as it was (absent, or the previous complete one)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hybridir import cli
from hybridir.data.fetch import fetch_all, sha256_of
from hybridir.data.sources import Source, find, load_registry

# Two small files of the real registry: an evaluation file and a training one.
SUFFIXES = ("/xquad-r/de.json", "/DOCUMENT_IDS.tsv")


def _sources() -> list[Source]:
    registry = load_registry()
    return [find(registry, s) for s in SUFFIXES]


def _write_registry(path: Path, sources: list[Source]) -> Path:
    rows = ["url\tsha256\tbytes\tlicense\trole"]
    rows += [f"{s.url}\t{s.sha256}\t{s.bytes}\t{s.license}\t{s.role}" for s in sources]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _mirror_copy(mirror: Path, dest: Path, sources: list[Source]) -> Path:
    for s in sources:
        (dest / s.relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mirror / s.relpath, dest / s.relpath)
    return dest


def _corrupt(path: Path) -> str:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return sha256_of(path)


def _fetch(out: Path, mirror: Path, registry: Path) -> int:
    return cli.main(["fetch", "--out", str(out), "--mirror", str(mirror), "--registry", str(registry)])


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


@pytest.fixture
def setup(mirror: Path, tmp_path: Path) -> tuple[list[Source], Path, Path]:
    sources = _sources()
    return sources, _mirror_copy(mirror, tmp_path / "mirror", sources), _write_registry(tmp_path / "reg.tsv", sources)


def test_fetch_verifies_and_then_finds_files_present(setup, tmp_path: Path) -> None:
    sources, mirror, _ = setup
    out = tmp_path / "raw"
    assert fetch_all(sources, out, mirror) == {"mirror": 2}
    for s in sources:
        assert sha256_of(out / s.relpath) == s.sha256
    assert fetch_all(sources, out, mirror) == {"present": 2}


def test_corrupt_mirror_copy_stops_with_url_and_both_hashes(setup, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    sources, mirror, registry = setup
    bad = sources[0]
    actual = _corrupt(mirror / bad.relpath)
    out = tmp_path / "raw"
    assert _fetch(out, mirror, registry) == 2
    err = capsys.readouterr().err
    for part in (bad.url, f"expected: {bad.sha256}", f"actual:   {actual}", str(mirror / bad.relpath)):
        assert part in err, err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mirror", "reg.tsv"]   # no temporary left


def test_failed_fetch_keeps_the_previous_raw_directory(setup, mirror: Path, tmp_path: Path) -> None:
    sources, small_mirror, registry = setup
    out = tmp_path / "raw"
    assert _fetch(out, small_mirror, registry) == 0
    before = _snapshot(out)
    extra = find(load_registry(), "/xquad-r/en.json")   # a registry update whose new file is bad
    _mirror_copy(mirror, small_mirror, [extra])
    _corrupt(small_mirror / extra.relpath)
    assert _fetch(out, small_mirror, _write_registry(registry, sources + [extra])) == 2
    assert _snapshot(out) == before


def test_damaged_local_copy_is_fetched_again(setup, tmp_path: Path) -> None:
    sources, mirror, registry = setup
    out = tmp_path / "raw"
    assert _fetch(out, mirror, registry) == 0
    _corrupt(out / sources[1].relpath)
    assert fetch_all(sources, out, mirror) == {"present": 1, "mirror": 1}
    assert sha256_of(out / sources[1].relpath) == sources[1].sha256


def test_missing_mirror_directory_is_named(setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    _, _, registry = setup
    monkeypatch.setenv("HYBRIDIR_MIRROR", str(tmp_path / "no-such-mirror"))
    assert cli.main(["fetch", "--out", str(tmp_path / "raw"), "--registry", str(registry)]) == 2
    err = capsys.readouterr().err
    assert "no-such-mirror" in err and "HYBRIDIR_MIRROR" in err
    assert not (tmp_path / "raw").exists()


def test_file_neither_in_mirror_nor_downloadable_is_named(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Offline and absent from the mirror: a clear error, not a traceback (a file:// URL stands in
    for an unreachable server, so the test never touches the network)."""
    url = (tmp_path / "upstream" / "gone.json").as_uri()
    source = Source(url, "0" * 64, 1, "CC0", "test")
    registry = _write_registry(tmp_path / "reg.tsv", [source])
    (tmp_path / "mirror").mkdir()
    assert _fetch(tmp_path / "raw", tmp_path / "mirror", registry) == 2
    err = capsys.readouterr().err
    assert f"cannot download {url}" in err and str(tmp_path / "mirror" / source.relpath) in err, err
    assert not (tmp_path / "raw").exists()
