"""A real S3-protocol server (moto) on 127.0.0.1, started as a separate process; and a hung endpoint."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "graft-test-key",
    "AWS_SECRET_ACCESS_KEY": "graft-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def child_server(argv: list[str], probe: str, name: str, timeout: float, poll: float) -> Iterator[None]:
    """Run a test server as a child process until `probe` (a URL) answers; stop it on exit (terminate, then kill)."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(probe, timeout=1)  # noqa: S310 (loopback)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start") from None
                time.sleep(poll)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def moto_server() -> Iterator[str]:
    """Run `moto.server` in a child process; yields its endpoint URL."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with child_server([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                      f"{endpoint}/moto-api/", "moto server", timeout=60, poll=0.2):
        yield endpoint


def s3_env(endpoint: str) -> dict[str, str]:
    """Environment a process needs to reach the test S3 server (what a RayJob pod gets from its Secret)."""
    return {**TEST_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}


def make_bucket(endpoint: str, name: str) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=name)


def apply_env(env: dict[str, str]) -> dict[str, str | None]:
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    return old


class HungEndpoint:
    """The URL of a hung endpoint and how many connections it has accepted (and left unanswered)."""

    def __init__(self, url: str, held: list[socket.socket]):
        self.url, self._held = url, held

    @property
    def accepted(self) -> int:
        return len(self._held)


@contextmanager
def hung_endpoint() -> Iterator[HungEndpoint]:
    """An endpoint on 127.0.0.1 that accepts TCP connections and never answers.

    What the operator met in issue 10: an S3 endpoint (e.g. a load balancer whose backends are gone) that completes
    the TCP handshake and then sends nothing. An S3 client sees no error, only silence, until its own request
    timeout: pyarrow's `request_timeout` (curl's low-speed time, see
    https://arrow.apache.org/docs/python/generated/pyarrow.fs.S3FileSystem.html) times its `retry_strategy`
    attempts (AwsStandardS3RetryStrategy, 3 by default), each ending in `curlCode: 28, Timeout`."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(128)
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)  # kept open and never read or written

    thread = threading.Thread(target=accept, name="hung-endpoint", daemon=True)
    thread.start()
    try:
        yield HungEndpoint(f"http://127.0.0.1:{server.getsockname()[1]}", held)
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()
