"""Throw-away copies of the repository, run end to end with the real DVC and Snakemake.

Also a pytest plugin: test modules load it with `pytest_plugins = ["pipeline_helpers"]`, which
makes the session-scoped smoke runs below shared by every module that asks for them (each full
smoke run costs minutes, so the suite makes two):
- `dvc_smoke`: config/smoke.yaml as params.yaml, `dvc repro` in a git repository, `dvc push` to a
  local remote;
- `snakemake_smoke`: the same params, `snakemake --cores 2` in a second copy (also a git repository,
  so its onsuccess hook records the run in dvc.lock);
- `pulled_clone`: `git clone` of the DVC repository plus `dvc pull` from that remote.
Tests that change a run's params.yaml restore it (`edited_params`), so fixtures stay shareable.
Both runs set HYBRIDIR_TRACE: each stage command records the params keys it read and the hybridir
modules it loaded (`trace_of`).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent      # the environment whose `hybridir`, `dvc`, `snakemake` we test
OUTPUT_ROOTS = ("data", "models", "results", "reports")
SNAKEMAKE_MARKER = ".snakemake_timestamp"   # Snakemake's mtime file in directory outputs
# Keys of the JSON side files that hold wall times or memory (train_summary.json, the embeddings'
# meta.json, evaluate's info.json): the only values two runs with one seed may disagree on.
TIMING_KEY = re.compile(r"(seconds|_s|_mb)$")
# The one output that holds wall times in prose (the report stage's uncached timings.md).
TIMED_TEXT = frozenset({"reports/timings.md"})


def require_mirror() -> Path:
    """The offline data mirror ($HYBRIDIR_MIRROR, else ../shared/mirror beside the repository).

    Missing, the test skips locally but fails under CI (CI=true or 1): a CI run that skipped every
    data test would pass while testing next to nothing.
    """
    env = os.environ.get("HYBRIDIR_MIRROR")
    path = Path(env) if env else REPO.parent / "shared" / "mirror"
    if path.is_dir():
        return path.resolve()
    reason = (f"offline data mirror {path} not found: set HYBRIDIR_MIRROR to a directory laid out like "
              f"data/raw, or place the mirror at {REPO.parent / 'shared' / 'mirror'}")
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{reason} (CI={os.environ['CI']}: the data tests must run, not skip)", pytrace=False)
    pytest.skip(reason)


def tool_env(mirror: Path, code: Path) -> dict[str, str]:
    """Environment for the tools in working copy `code`: its own src/ first on PYTHONPATH (so the
    code DVC hashes is the code that runs, whatever happens to the checkout meanwhile), this
    venv's tools first on PATH, offline, the mirror, a git identity."""
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": os.pathsep.join(p for p in (str(code / "src"), env.get("PYTHONPATH")) if p),
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1",
        "HYBRIDIR_MIRROR": str(mirror),
        "GIT_AUTHOR_NAME": "hybridir tests", "GIT_AUTHOR_EMAIL": "tests@hybridir.invalid",
        "GIT_COMMITTER_NAME": "hybridir tests", "GIT_COMMITTER_EMAIL": "tests@hybridir.invalid",
    })
    return env


def sh(args: list[str], cwd: Path, env: dict[str, str], *, ok: bool | None = True,
       timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    """Run a command (stdout and stderr together). ok=True: it must succeed; False: it must fail."""
    proc = subprocess.run(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    if ok is not None and (proc.returncode == 0) != ok:
        raise AssertionError(f"`{' '.join(args)}` in {cwd} exited {proc.returncode}, expected "
                             f"{'success' if ok else 'failure'}; output tail:\n{proc.stdout[-6000:]}")
    return proc


# ---------------------------------------------------------------- building a working copy


def repo_files(repo: Path = REPO) -> list[str]:
    """What a clone would hold, plus files not yet committed (but not ignored ones)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=repo, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"{repo} is not a git checkout: the pipeline tests copy its tracked files")
    return [f for f in out.decode().split("\0") if f and (repo / f).is_file()]


@dataclass(frozen=True)
class Workdir:
    path: Path
    env: dict[str, str]


def snapshot_repo(dest: Path) -> Path:
    """The repository's files (tracked, and untracked but not ignored) copied to `dest`."""
    for rel in repo_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    return dest


def make_workdir(dest: Path, mirror: Path, params: dict[str, Any] | None = None,
                 source: Path | None = None) -> Workdir:
    """A working copy at `dest` of `source` (a snapshot) or else of the repository; with `params`,
    they become its params.yaml, and its dvc.yaml is regenerated (DVC reads params.yaml)."""
    if source is None:
        snapshot_repo(dest)
    else:
        shutil.copytree(source, dest, symlinks=True)
    env = tool_env(mirror, dest)
    if params is not None:
        write_params(dest, params, env)
    return Workdir(dest, env)


def smoke_params(root: Path = REPO) -> dict[str, Any]:
    return yaml.safe_load((root / "config" / "smoke.yaml").read_text(encoding="utf-8"))


def write_params(workdir: Path, params: dict[str, Any], env: dict[str, str]) -> None:
    """params.yaml := `params`, and dvc.yaml regenerated from it (DVC reads params.yaml)."""
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    sh([str(BIN / "hybridir"), "dvc-yaml"], workdir, env)


def git_init(workdir: Path, env: dict[str, str]) -> None:
    sh(["git", "init", "-q", "-b", "main"], workdir, env)
    git_commit(workdir, env, "working copy for tests")


def git_commit(workdir: Path, env: dict[str, str], message: str) -> None:
    sh(["git", "add", "-A"], workdir, env)
    sh(["git", "-c", "commit.gpgsign=false", "commit", "-q", "--allow-empty", "-m", message], workdir, env)


def set_dotted(params: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, key = dotted.split(".")
    for part in parents:
        params = params[part]
    params[key] = value


@contextlib.contextmanager
def edited_params(workdir: Path, changes: dict[str, Any]) -> Iterator[None]:
    """params.yaml with `changes` (dotted keys) applied, restored byte for byte afterwards."""
    path = workdir / "params.yaml"
    original = path.read_bytes()
    params = yaml.safe_load(original)
    for dotted, value in changes.items():
        set_dotted(params, dotted, value)
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    try:
        yield
    finally:
        path.write_bytes(original)


# ---------------------------------------------------------------- what the tools say


def dvc(workdir: Path, env: dict[str, str], *args: str, ok: bool | None = True) -> str:
    return sh([str(BIN / "dvc"), *args], workdir, env, ok=ok).stdout


def dvc_changed(workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    """`dvc status --json`: stage -> what changed ({} when everything is up to date)."""
    out = dvc(workdir, env, "status", "--json")
    return json.loads(out[out.index("{"):])


def dvc_ran(output: str) -> list[str]:
    """Stages a `dvc repro` output says it ran (not those restored from the run cache)."""
    return re.findall(r"^Running stage '([^']+)':", output, flags=re.M)


def snakemake(workdir: Path, env: dict[str, str], *args: str, ok: bool | None = True,
              cores: int = 2) -> subprocess.CompletedProcess[str]:
    proc = sh([str(BIN / "snakemake"), "--cores", str(cores), *args], workdir, env, ok=None)
    if ok and proc.returncode:   # the failed jobs' own logs say why; the run directory may be gone later
        logs = re.findall(r"log: (\S+) \(check log file", proc.stdout)
        tails = "".join(f"\n--- {log}:\n" + (workdir / log).read_text(errors="replace")[-3000:]
                        for log in logs if (workdir / log).is_file())
        raise AssertionError(f"snakemake {' '.join(args)} in {workdir} exited {proc.returncode}; "
                             f"output tail:\n{proc.stdout[-4000:]}{tails}")
    if ok is False and not proc.returncode:
        raise AssertionError(f"snakemake {' '.join(args)} in {workdir} succeeded, expected failure")
    return proc


def snakemake_plan(workdir: Path, env: dict[str, str], *args: str) -> dict[str, int]:
    """rule -> number of jobs a dry run would execute ({} for 'Nothing to be done')."""
    out = snakemake(workdir, env, "--dry-run", *args).stdout
    if "Nothing to be done" in out:
        return {}
    table = out[out.index("Job stats:"):].splitlines()[3:]   # title, header, rule line
    jobs = {}
    for line in table:
        name, count = line.split()
        if name == "total":
            return jobs
        jobs[name] = int(count)
    raise AssertionError(f"no job table in the dry run:\n{out[-3000:]}")


def downstream(dvc_yaml: Path, changed: set[str]) -> set[str]:
    """`changed` and every stage that depends on them, directly or not (from dvc.yaml)."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]

    def produces(outs: list[str], dep: str) -> bool:
        return any(dep == o or dep.startswith(o + "/") for o in outs)

    outs = {n: [o if isinstance(o, str) else next(iter(o)) for o in s.get("outs", []) + s.get("metrics", [])]
            for n, s in stages.items()}   # an out is a path or {path: {cache: false}}
    found = set(changed)
    grew = True
    while grew:
        grew = False
        for name, st in stages.items():
            if name not in found and any(produces(outs[u], d) for u in found for d in st["deps"]):
                found.add(name)
                grew = True
    return found


# ---------------------------------------------------------------- comparing two runs


def output_files(workdir: Path) -> set[str]:
    return {p.relative_to(workdir).as_posix()
            for root in OUTPUT_ROOTS if (workdir / root).is_dir()
            for p in (workdir / root).rglob("*") if p.is_file() and p.name != SNAKEMAKE_MARKER}


def without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not TIMING_KEY.search(k)}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def run_differences(a: Path, b: Path) -> list[str]:
    """Every way the outputs of two runs differ, beyond timing fields (empty: same results)."""
    files_a, files_b = output_files(a), output_files(b)
    problems = [f"only in {a.name}: {f}" for f in sorted(files_a - files_b)]
    problems += [f"only in {b.name}: {f}" for f in sorted(files_b - files_a)]
    for rel in sorted(files_a & files_b):
        x, y = (a / rel).read_bytes(), (b / rel).read_bytes()
        if x == y or rel in TIMED_TEXT:
            continue
        if rel.endswith(".json") and without_timings(json.loads(x)) == without_timings(json.loads(y)):
            continue
        problems.append(f"differs: {rel}")
    return problems


# ---------------------------------------------------------------- shared smoke runs (plugin)


def with_trace(env: dict[str, str], trace_dir: Path) -> dict[str, str]:
    return {**env, "HYBRIDIR_TRACE": str(trace_dir)}


def traces(trace_dir: Path) -> dict[str, dict[str, Any]]:
    """Stage command (as in dvc.yaml) -> what it read and loaded, from a run with HYBRIDIR_TRACE."""
    found = {}
    for path in trace_dir.glob("*.json"):
        record = json.loads(path.read_text())
        found[" ".join(["hybridir", *record["argv"]])] = record
    return found


@dataclass(frozen=True)
class DvcRun:
    repo: Path          # git repository where `dvc repro` ran (then committed and pushed)
    remote: Path
    env: dict[str, str]
    repro_output: str
    trace: Path         # HYBRIDIR_TRACE of the run
    snakemake_plan: dict[str, int]   # what `snakemake -n` planned right after `dvc repro`


@pytest.fixture(scope="session")
def smoke_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Scratch for the smoke runs (several GB of models): removed when the session ends."""
    root = tmp_path_factory.mktemp("smoke")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def smoke_source(smoke_root: Path) -> Path:
    """One snapshot of the repository, so both smoke runs start from the same code and params."""
    return snapshot_repo(smoke_root / "source")


@pytest.fixture(scope="session")
def dvc_smoke(smoke_root: Path, smoke_source: Path) -> DvcRun:
    wd = make_workdir(smoke_root / "dvc", require_mirror(), smoke_params(smoke_source), smoke_source)
    repo, env = wd.path, with_trace(wd.env, smoke_root / "trace-dvc")
    remote = smoke_root / "remote"
    remote.mkdir()
    git_init(repo, env)
    dvc(repo, env, "remote", "add", "-d", "local", str(remote))
    git_commit(repo, env, "local DVC remote")
    output = dvc(repo, env, "repro")
    git_commit(repo, env, "dvc repro (smoke)")   # dvc.lock and the metrics files git tracks
    dvc(repo, env, "push")
    env.pop("HYBRIDIR_TRACE")
    return DvcRun(repo, remote, env, output, smoke_root / "trace-dvc", snakemake_plan(repo, env))


@dataclass(frozen=True)
class SnakemakeRun:
    path: Path          # git repository (uncommitted outputs) where `snakemake --cores 2` ran
    env: dict[str, str]
    output: str
    trace: Path


@pytest.fixture(scope="session")
def snakemake_smoke(smoke_root: Path, smoke_source: Path) -> SnakemakeRun:
    wd = make_workdir(smoke_root / "snakemake", require_mirror(), smoke_params(smoke_source), smoke_source)
    git_init(wd.path, wd.env)
    trace = smoke_root / "trace-snakemake"
    output = snakemake(wd.path, with_trace(wd.env, trace)).stdout
    return SnakemakeRun(wd.path, wd.env, output, trace)


@pytest.fixture(scope="session")
def pulled_clone(dvc_smoke: DvcRun, smoke_root: Path) -> Workdir:
    """A researcher's fresh clone: git clone, then `dvc pull` (its own, empty cache)."""
    clone = smoke_root / "clone"
    sh(["git", "clone", "-q", str(dvc_smoke.repo), str(clone)], smoke_root, dvc_smoke.env)
    env = tool_env(require_mirror(), clone)
    dvc(clone, env, "pull")
    return Workdir(clone, env)
