"""A real Ray cluster of a head and worker nodes on this machine, for the executor tests.

Everything runs inside a network namespace of its own that has only loopback: outside one, Ray binds to
the machine's interface address, which tests must not use. Inside it every port is free, so the head
always listens on 127.0.0.1:6379. Drivers (the thresher command under test) run in the same namespace
through `nsenter`. Needs root (unshare/nsenter), as CI runs the suite.

Each `ray start --block` is started in a session of its own; Ray's workers stay in that session (though
in process groups of their own), so a node is stopped, or killed as a lost node, by killing every process
of its session.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
PORT = 6379
OBJECT_STORE_BYTES = 80 * 2**20  # two nodes share the test machine's memory with everything else

# Run as a driver in the namespace: waits until ADDRESS has COUNT live nodes, for up to SECONDS.
_WAIT_FOR_NODES = """
import logging, sys, time
import ray
address, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + seconds
while True:
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        break
    except ConnectionError:  # no node on this address has registered yet
        if time.monotonic() > deadline:
            raise
        time.sleep(0.5)
while (alive := sum(n["Alive"] for n in ray.nodes())) != count:
    if time.monotonic() > deadline:
        sys.exit(f"{alive} of {count} nodes alive")
    time.sleep(0.2)
"""


def session_of(pid: int) -> int | None:
    """The session id of a running process (field 6 of /proc/PID/stat); None once it is gone or a zombie
    (dead, waiting for its parent to collect it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after its closing one.
    state, _, _, sid = stat.rpartition(")")[2].split()[:4]
    return None if state in "ZX" else int(sid)


def session_members(sid: int) -> list[int]:
    return [
        int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and session_of(int(p.name)) == sid
    ]


def kill_session(sid: int, timeout: float = 30) -> None:
    """SIGKILL every process of a session, as a node dies when its machine goes away; wait until none is
    left."""
    deadline = time.monotonic() + timeout
    while members := session_members(sid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes of Ray node session {sid} would not die: {members}")
        for pid in members:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


class RayCluster:
    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.address = f"127.0.0.1:{PORT}"
        self.env = {**env, "RAY_USAGE_STATS_ENABLED": "0"}
        # Ray's socket paths must stay under 108 bytes: pytest's tmp paths are too long for its temp dir.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        self.holder = subprocess.Popen(["unshare", "--net", "sleep", "infinity"], start_new_session=True)
        self.head: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self._logs = 0

    def command(self, *args: str) -> list[str]:
        """A command line that runs inside the cluster's network namespace."""
        return ["nsenter", "--target", str(self.holder.pid), "--net", "--", *args]

    def _start_node(self, *args: str) -> subprocess.Popen[bytes]:
        self._logs += 1
        log = (self.root / f"node-{self._logs}.log").open("wb")
        flags = ["--num-cpus", "1", "--object-store-memory", str(OBJECT_STORE_BYTES), "--block"]
        flags += ["--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
        # The agent's HTTP port is fixed by default: two nodes on one address need one each.
        flags += ["--dashboard-agent-listen-port", str(52365 + self._logs)]
        return subprocess.Popen(
            self.command(RAY, "start", *args, *flags),
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start(self) -> None:
        # Until unshare has run, the holder is still in this namespace, and so would be the cluster.
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{self.holder.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            if time.monotonic() > deadline:
                raise RuntimeError("the network namespace for the Ray cluster did not come up")
            time.sleep(0.05)
        subprocess.run(self.command("ip", "link", "set", "lo", "up"), check=True)
        self.head = self._start_node(
            "--head", "--port", str(PORT), "--include-dashboard=false", "--temp-dir", str(self.temp_dir)
        )
        # A driver that connects before the head listens hangs for minutes instead of failing.
        log, deadline = self.root / "node-1.log", time.monotonic() + 120
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if self.head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Ray head did not start; see {log}")
            time.sleep(0.2)
        self.add_worker()

    def add_worker(self) -> subprocess.Popen[bytes]:
        worker = self._start_node("--address", self.address)
        self.workers.append(worker)
        self.wait_for_nodes()
        return worker

    def wait_for_nodes(self, timeout: float = 120) -> None:
        """Until the head and every live worker have joined: a test that relies on a task landing on each
        node must not start before. One driver polls, as each connect costs seconds on a busy machine."""
        expected = 1 + sum(w.poll() is None for w in self.workers)
        proc = subprocess.run(
            self.command(sys.executable, "-c", _WAIT_FOR_NODES, self.address, str(expected), str(timeout)),
            env=self.env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"Ray nodes did not come up ({proc.stderr.strip()[-500:]}); logs in {self.root}"
            )

    def node_of(self, pid: int) -> subprocess.Popen[bytes] | None:
        """The node (its `ray start` process) that a task's worker process belongs to."""
        sid = session_of(pid)
        return next((n for n in [self.head, *self.workers] if n is not None and n.pid == sid), None)

    def kill_node(self, node: subprocess.Popen[bytes]) -> None:
        kill_session(node.pid)
        node.wait()

    def stop(self) -> None:
        try:
            for node in [*self.workers, self.head]:
                if node is not None:
                    kill_session(node.pid)
        finally:
            # Reap what we started, even when some node would not die.
            for proc in [*self.workers, self.head, self.holder]:
                if proc is not None:
                    with suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait()
            shutil.rmtree(self.temp_dir, ignore_errors=True)


@contextmanager
def ray_cluster(root: Path, env: dict[str, str] | None = None) -> Iterator[RayCluster]:
    """A head and one worker node (one CPU each); stopped by pid when the block ends, however it ends."""
    if shutil.which("nsenter") is None or shutil.which("unshare") is None or os.geteuid() != 0:
        raise RuntimeError("the Ray cluster tests need root and util-linux's unshare/nsenter")
    root.mkdir(parents=True, exist_ok=True)
    cluster = RayCluster(root, dict(env if env is not None else os.environ))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
