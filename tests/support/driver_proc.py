"""A trainer driver as a separate process in its own session (like a RayJob's submitter pod), with its own Ray
(RAY_TMPDIR): killed as a whole, its Ray processes reaped, never leaked. """

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path


class DriverProcess:
    def __init__(self, args: list[str], tmp_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None):
        # Short: Ray's socket paths under it must stay within AF_UNIX's 107 bytes.
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="graft-ray-", dir="/tmp"))
        self.log = tmp_path / f"driver-{time.monotonic_ns()}.log"
        full_env = {**os.environ, **(env or {}), "RAY_TMPDIR": str(self.ray_tmp), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(args, cwd=cwd, env=full_env, stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"driver still running after {timeout}s:\n{self.output()[-3000:]}") from None
        finally:
            self.reap_ray()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        self.proc.wait(60)
        self.reap_ray()

    def reap_ray(self) -> None:
        """Ray processes this driver started (found by its RAY_TMPDIR) that outlived it."""
        for pid in pids_with_env("RAY_TMPDIR", str(self.ray_tmp)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, predicate, timeout: float, what: str):
        """`predicate()`'s first true value within `timeout`; kills the driver and fails otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None:
                raise AssertionError(f"driver exited ({self.proc.returncode}) before {what}:\n{self.output()[-3000:]}")
            time.sleep(0.3)
        self.kill()
        raise AssertionError(f"timed out waiting for {what}:\n{self.output()[-3000:]}")


def pids_with_env(key: str, value: str) -> list[int]:
    """The processes (other than this one) whose environment has `key=value`."""
    needle = f"{key}={value}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def ray_train_workers(ray_tmp: str | Path) -> set[int]:
    """The Ray Train worker processes (`RayTrainWorker` actors) of the Ray whose RAY_TMPDIR is `ray_tmp`."""
    return {p for p in pids_with_env("RAY_TMPDIR", str(ray_tmp)) if "RayTrainWorker" in cmdline(p)}
