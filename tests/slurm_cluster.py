"""A real single-node Slurm (munged, slurmctld, slurmd) under a temp folder, for the executor tests.

Needs Debian's `slurm-wlm` and `munge` packages (.ci/run installs them). Runs as root, with the settings
known to work on this machine kind: linuxproc process tracking, no task plugin (the cgroup plugins report
jobs COMPLETED without running them), accounting off.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


def thresher(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "thresher.cli", *args], capture_output=True, text=True, env=env
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"thresher {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def queued_jobs(env: dict[str, str], count: int) -> list[str]:
    """Wait until `count` array jobs are in the queue; their ids, oldest first."""
    jobs: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(jobs) < count:
        listed = subprocess.run(["squeue", "-h", "-o", "%F"], capture_output=True, text=True, env=env)
        jobs = sorted(set(listed.stdout.split()), key=int)
        time.sleep(0.2)
    assert len(jobs) == count, jobs
    return jobs


def table_rows(output: str) -> list[list[str]]:
    """The body rows of a rich table as lists of stripped cells (wrapped cells are not joined)."""
    return [
        [c.strip() for c in line.split("│")[1:-1]]
        for line in output.splitlines()
        if line.startswith("│") and line.split("│")[1].strip()
    ]


def wait_for_text(path: Path, needles: tuple[str, ...], timeout: float = 60) -> str:
    """Poll a log file until one of `needles` appears; return the text."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if any(n in text for n in needles):
            return text
        time.sleep(0.2)
    raise AssertionError(f"none of {needles} in {path}:\n{text}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 // 2
    return 4000


@contextmanager
def slurm_cluster(root: Path, max_array_size: int = 1001) -> Iterator[dict[str, str]]:
    """Start the daemons; yield the environment (SLURM_CONF) for clients; stop them by pid."""
    missing = [t for t in ("munged", "slurmctld", "slurmd", "sbatch", "squeue") if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"Slurm tools missing ({', '.join(missing)}): apt-get install slurm-wlm munge")
    for sub in ("state", "spool", "log", "munge"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    sock = root / "munge" / "sock"
    conf = root / "slurm.conf"
    cpus = os.cpu_count() or 1
    conf.write_text(f"""ClusterName=thresher-test
SlurmctldHost=localhost
AuthType=auth/munge
AuthInfo=socket={sock}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmUser=root
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
MaxArraySize={max_array_size}
NodeName=localhost CPUs={cpus} RealMemory={_memory_mb()} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    pids = [root / "munge" / "pid", root / "slurmctld.pid", root / "slurmd.pid"]
    try:
        subprocess.run(
            [
                "munged",
                "--force",
                f"--key-file={key}",
                f"--socket={sock}",
                f"--pid-file={pids[0]}",
                f"--seed-file={root}/munge/seed",
                f"--log-file={root}/munge/log",
            ],
            check=True,
            env=env,
        )
        subprocess.run(["slurmctld"], check=True, env=env)
        subprocess.run(["slurmd"], check=True, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env)
            if state.stdout.strip() == "idle":
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"Slurm node never became idle; see {root}/log")
        yield env
    finally:
        for pid_file in reversed(pids):
            with suppress(FileNotFoundError, ValueError, ProcessLookupError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
