"""A throw-away single-node Slurm cluster (Debian's slurmctld, slurmd and munge) for the tests.

Everything lives under one scratch directory: its own munge key and socket, a slurm.conf generated
for this machine, state, spool, logs and pid files; the daemons run in the foreground as children
of the test and are stopped by their process ids. Nothing in /etc is read or changed: the tools
find the cluster through SLURM_CONF, which the jobs inherit.

Job status comes from `squeue`: there is no accounting database (slurmdbd), so finished jobs stay
visible to squeue for MinJobAge seconds, long enough for the Snakemake executor to see them end.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo")
APT_PACKAGES = "munge slurmctld slurmd slurm-client"   # what .ci/run installs
PARTITION = "hybridir"
CPUS = 2
MIN_JOB_AGE_S = 900        # finished jobs stay in squeue this long (the executor's status source)
HEADROOM_MB = 2048         # memory Slurm does not hand out (the OS, the daemons, snakemake itself)


@dataclass(frozen=True)
class Cluster:
    root: Path
    env: dict[str, str]    # SLURM_CONF for the client tools, sbatch and the jobs
    partition: str
    real_memory_mb: int

    def env_for(self, base: dict[str, str]) -> dict[str, str]:
        """`base` (a test's tool environment) that also reaches this cluster."""
        return {**base, "SLURM_CONF": self.env["SLURM_CONF"],
                "PATH": os.pathsep.join([str(self.root / "bin"), base["PATH"], "/usr/sbin", "/sbin"])}


def require_slurm() -> None:
    """Skip without Slurm's and munge's programs; under CI (CI=true or 1), fail instead."""
    missing = [d for d in DAEMONS if shutil.which(d, path=_sbin_path()) is None]
    if not missing:
        return
    reason = f"Slurm not installed (missing {', '.join(missing)}): apt-get install {APT_PACKAGES}"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{reason} (CI={os.environ['CI']}: the Slurm test must run, not skip)", pytrace=False)
    pytest.skip(reason)


def _sbin_path() -> str:
    """PATH plus the sbin directories, where Debian puts the daemons."""
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_total_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def slurm_conf(root: Path, host: str, real_memory_mb: int) -> str:
    """slurm.conf for one node, this host, CPUS cores and real_memory_mb, everything under root."""
    return f"""\
ClusterName=hybridir
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
# No cgroups (containers rarely allow them): processes tracked by parent id, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MinJobAge={MIN_JOB_AGE_S}
ReturnToService=2
# The node is what this file says, whatever the hardware (CI machines differ).
SlurmdParameters=config_overrides
NodeName={host} NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory={real_memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _srun_shim(root: Path) -> Path:
    """A bin directory whose `srun` finds this cluster. Inside a job the executor calls srun with
    every SLURM_* variable removed, SLURM_CONF too; a real cluster's srun then reads
    /etc/slurm/slurm.conf, which the tests leave alone."""
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    srun = bin_dir / "srun"
    srun.write_text(f'#!/bin/sh\nSLURM_CONF={root}/slurm.conf exec {shutil.which("srun")} "$@"\n')
    srun.chmod(0o755)
    return bin_dir


def _wait_for(what: str, check, timeout_s: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {p}:\n{p.read_text(errors='replace')[-2000:]}" for p in logs if p.is_file())
    raise RuntimeError(f"Slurm test cluster: {what} not ready after {timeout_s:.0f} s\n{tails}")


def _node_idle(env: dict[str, str]) -> bool:
    proc = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
    return proc.returncode == 0 and proc.stdout.strip() == "idle"


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):   # slurmd, slurmctld, then munged
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def local_slurm(root: Path) -> Iterator[Cluster]:
    """Start munged, slurmctld and slurmd under `root`; stop them (by pid) when the block ends."""
    require_slurm()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)   # munged refuses a socket directory others can write to
    for sub in ("state", "spool"):
        (root / sub).mkdir(exist_ok=True)
    host = socket.gethostname().split(".")[0]
    real_memory = _mem_total_mb() - HEADROOM_MB
    (root / "slurm.conf").write_text(slurm_conf(root, host, real_memory))
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf"),
           "PATH": os.pathsep.join([str(_srun_shim(root)), _sbin_path()])}
    subprocess.run(["mungekey", "--create", f"--keyfile={root}/munge.key"], check=True, env=env)
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> None:
        with open(root / f"{name}.out", "w") as out:   # foreground daemons also write to stderr
            procs.append(subprocess.Popen([name, *args], env=env, stdout=out, stderr=subprocess.STDOUT))

    try:
        start("munged", "--foreground", "--force", f"--socket={root}/munge.socket",
              f"--key-file={root}/munge.key", f"--pid-file={root}/munged.pid",
              f"--log-file={root}/munged.log", f"--seed-file={root}/munged.seed")
        _wait_for("munged", lambda: (root / "munge.socket").exists(), 30, [root / "munged.out"])
        # -D: foreground (a child we can stop); -c: a cold start, no state from an earlier cluster.
        start("slurmctld", "-D", "-c")
        start("slurmd", "-D")
        _wait_for("the node", lambda: _node_idle(env), 60,
                  [root / "slurmctld.out", root / "slurmd.out", root / "munged.out"])
        yield Cluster(root, env, PARTITION, real_memory)
    finally:
        _stop(procs)
