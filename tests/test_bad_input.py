"""Bad input at the pipeline level: the job stops with an error naming the file, and leaves no output.

Per-module checks live beside their modules (test_evaldata, test_traindata, test_modeling,
test_encode, test_fetch); here the same damage goes through the real Snakemake (and DVC) runs
of a working copy with the smoke params, and through the stage commands over an earlier output.
"""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from hybridir.data.fetch import sha256_of
from hybridir.data.sources import find, load_registry, local_path

pytest.register_assert_rewrite("pipeline_helpers")
from pipeline_helpers import (BIN, Workdir, dvc, git_init, make_workdir, require_mirror, sh,  # noqa: E402
                              smoke_params, snakemake)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Workdir:
    """A working copy whose data stages (fetch, eval_data, train_data) have run."""
    wd = make_workdir(tmp_path_factory.mktemp("bad_input"), require_mirror(), smoke_params())
    snakemake(wd.path, wd.env, "data/raw", "data/eval", "data/train")
    return wd


def raw_file(workdir: Path, suffix: str) -> Path:
    return local_path(workdir / "data" / "raw", find(load_registry(), suffix))


@contextlib.contextmanager
def damaged(path: Path, content: bytes | None) -> Iterator[Path]:
    """`path` replaced by `content` (None: deleted) for the block, then restored."""
    original = path.read_bytes()
    path.unlink()
    if content is not None:
        path.write_bytes(content)
    try:
        yield path
    finally:
        path.write_bytes(original)


def failed_job(wd: Workdir, rule: str, target: str) -> str:
    """Force `rule` (alone) to build `target`; it must fail. Returns the job's log."""
    snakemake(wd.path, wd.env, target, "--forcerun", rule, "--allowed-rules", rule, ok=False, cores=1)
    assert not (wd.path / target).exists(), f"{target} exists after its job failed"
    leftovers = [p.name for p in (wd.path / target).parent.glob(f".{Path(target).name}.*")]
    assert leftovers == [], f"temporaries left beside {target}: {leftovers}"
    return (wd.path / "logs" / f"{rule}.log").read_text(encoding="utf-8")


def stage_command(wd: Workdir, *args: str) -> str:
    """A stage command run directly (as a user would); it must fail. Returns its output."""
    return sh([str(BIN / "hybridir"), *args], wd.path, wd.env, ok=False).stdout


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def test_corrupt_mirror_stops_fetch_in_snakemake_and_dvc(mirror: Path, tmp_path: Path) -> None:
    bad_mirror = tmp_path / "mirror"
    shutil.copytree(mirror, bad_mirror)
    source = find(load_registry(), "/xquad-r/de.json")
    copy = bad_mirror / source.relpath
    copy.write_bytes(copy.read_bytes()[:-100])   # a truncated download in the mirror
    actual = sha256_of(copy)
    wd = make_workdir(tmp_path / "repo", bad_mirror, smoke_params())
    expected = [source.url, f"expected: {source.sha256}", f"actual:   {actual}"]

    log = failed_job(wd, "fetch", "data/raw")
    assert all(part in log for part in expected), log

    git_init(wd.path, wd.env)
    out = dvc(wd.path, wd.env, "repro", "fetch", ok=False)
    assert all(part in out for part in expected), out
    assert not (wd.path / "data" / "raw").exists()
    assert not (wd.path / "dvc.lock").exists()


def test_truncated_json_stops_eval_data(staged: Workdir) -> None:
    path = raw_file(staged.path, "/xquad-r/en.json")
    with damaged(path, path.read_bytes()[:5000]):
        log = failed_job(staged, "eval_data", "data/eval")
    assert "xquad-r/en.json" in log and "not valid JSON" in log, log


def test_missing_language_file_stops_eval_data(staged: Workdir) -> None:
    with damaged(raw_file(staged.path, "/xquad-r/el.json"), None):
        log = failed_job(staged, "eval_data", "data/eval")
    assert "xquad-r/el.json" in log and "hybridir fetch" in log, log


def test_empty_training_source_stops_train_data(staged: Workdir) -> None:
    before = snapshot(staged.path / "data" / "train")
    path = raw_file(staged.path, "/newstest2019-ref.deu.txt")
    with damaged(path, b""):
        err = stage_command(staged, "train-data", "--params", "params.yaml", "--raw", "data/raw",
                            "--out", "data/train")
        assert "newstest2019-ref.deu.txt has 0 lines" in err, err
        assert snapshot(staged.path / "data" / "train") == before   # the earlier output, untouched
        log = failed_job(staged, "train_data", "data/train")
    assert "newstest2019-ref.deu.txt has 0 lines" in log, log


def test_model_directory_without_weights_stops_encode(staged: Workdir) -> None:
    """An encoder directory that lost its weights file (an interrupted copy, a partial pull)."""
    snakemake(staged.path, staged.env, "data/eval")   # back, if a test above removed it
    model = staged.path / "models" / "base" / "e5-small"
    model.mkdir(parents=True)
    for name in ("config.json", "tokenizer_config.json"):
        (model / name).write_text(json.dumps({}))
    out = "results/e5-small/zeroshot/xquad_r/embeddings"
    earlier = staged.path / out
    earlier.mkdir(parents=True)
    (earlier / "meta.json").write_text("{}")   # an earlier, complete output
    try:
        err = stage_command(staged, "encode", "--params", "params.yaml", "--model", "models/base/e5-small/",
                            "--eval-data", "data/eval/xquad_r", "--out", out)
        assert "models/base/e5-small" in err and "model weights (*.safetensors)" in err, err
        assert snapshot(earlier) == {"meta.json": b"{}"}
        log = failed_job(staged, "encode_zeroshot_xquad_r", out)
        assert "models/base/e5-small" in log and "model weights (*.safetensors)" in log, log
    finally:
        shutil.rmtree(model)
        shutil.rmtree(earlier, ignore_errors=True)
