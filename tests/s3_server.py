"""A real S3 API on a loopback port for the object-storage tests: moto's server mode, one process, started
here and stopped by its pid. Clients reach it through the endpoint URL like any S3-compatible store.

`command_prefix` runs the server elsewhere (inside the Ray tests' network namespace, through nsenter).
With `auth=True` the server checks credentials (moto's INITIAL_NO_AUTH_ACTION_COUNT=0): a request signed
with keys it never issued is refused with 403, as a real store refuses bad credentials.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

MOTO = str(Path(sys.executable).with_name("moto_server"))
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "thresher-test",
    "AWS_SECRET_ACCESS_KEY": "thresher-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen[bytes]

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment whose S3 clients use this server (credentials and endpoint, no other store)."""
        env = dict(os.environ if base is None else base)
        env.update(CREDENTIALS)
        env["AWS_ENDPOINT_URL"] = self.endpoint
        for stray in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            env.pop(stray, None)
        return env

    def client(self):  # type: ignore[no-untyped-def]
        """A boto3 client for setting up and checking buckets from the test."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, process: subprocess.Popen[bytes], prefix: Sequence[str]) -> None:
    deadline = time.monotonic() + 60
    probe = [
        *prefix,
        sys.executable,
        "-c",
        f"import socket; socket.create_connection(('127.0.0.1', {port}), 1)",
    ]
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode}")
        if not prefix:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                return
            except OSError:
                pass
        elif subprocess.run(probe, capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"moto_server did not listen on port {port} within 60 s")


@contextmanager
def s3_server(
    log: Path, *, port: int | None = None, command_prefix: Sequence[str] = (), auth: bool = False
) -> Iterator[S3Server]:
    port = port or free_port()
    env = dict(os.environ)
    if auth:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [*command_prefix, MOTO, "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        _wait_listening(port, process, command_prefix)
        yield S3Server(f"http://127.0.0.1:{port}", process)
    finally:
        # Its own session: nsenter's child goes with it.
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
