"""The real `graft operator` as a child process talking to the emulated API server through a kubeconfig."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from support.s3 import free_port

#: The kubeconfig user (bearer token) the operator runs as; the RBAC audit filters the request log by it.
OPERATOR_USER = "graft-operator"


class OperatorProcess:
    """`graft operator --namespace NS [args]` in its own process; `kill()` is SIGKILL (no clean shutdown)."""

    def __init__(self, api, namespace: str, workdir: str | Path, metrics: bool = True, args: tuple[str, ...] = (),
                 python: str | None = None):
        """`python`: the interpreter to run the operator with (default: this venv's `graft`)."""
        self.api, self.namespace, self.workdir, self.args = api, namespace, Path(workdir), tuple(args)
        self.python = python
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = api.write_kubeconfig(self.workdir / "operator-kubeconfig", user=OPERATOR_USER)
        self.metrics_port = free_port() if metrics else 0
        self.liveness_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.log_path = self.workdir / "operator.log"

    def start(self, wait: bool = True) -> OperatorProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBECONFIG"))}
        env["KUBECONFIG"] = str(self.kubeconfig)
        self.starts += 1
        out = open(self.log_path, "ab")
        out.write(f"\n===== start {self.starts} =====\n".encode())
        out.flush()
        graft = [self.python, "-c", "from graft.cli import main; main()"] if self.python else [
            str(Path(sys.executable).with_name("graft"))]
        self.proc = subprocess.Popen(
            [*graft, "operator", "--namespace", self.namespace, "--metrics-port", str(self.metrics_port),
             "--liveness-port", str(self.liveness_port), *self.args],
            env=env, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 60) -> None:
        """Wait for the liveness endpoint (kopf answers it once its watchers are up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"graft operator exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=1)
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"graft operator not healthy after {timeout}s:\n{self.log()[-4000:]}")

    def metrics(self) -> str:
        """The Prometheus exposition text from /metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def peak_rss_bytes(self) -> int:
        """The process's peak resident set size (VmHWM) so far."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc status")

    def kill(self) -> None:
        """SIGKILL: what a node failure or an OOM kill does to the operator pod."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        """SIGTERM and wait, as a pod deletion does."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
