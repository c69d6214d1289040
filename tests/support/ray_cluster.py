"""One local Ray cluster for the whole test session (`ray start --head`), which drivers join through RAY_ADDRESS as
a RayJob's submitter joins its RayCluster (KubeRay sets RAY_ADDRESS in the head pod). Starting Ray is most of the time
of a small job on 2 cores; tests whose point is not Ray's own start-up or death share this one.

It runs in its own RAY_TMPDIR, and `stop()` kills exactly the processes that carry it in their environment (the
raylet, GCS, agents and every worker the cluster spawned): `ray stop` would kill every Ray on the machine.
A driver's `ray.shutdown()` only disconnects from a cluster it joined (ray/_private/worker.py `shutdown` calls
`Node.kill_all_processes`, which kills only the processes that Node started: none for a `connect_only` node), so no
job run here can take the cluster down.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from support.driver_proc import pids_with_env
from support.s3 import free_port

RAY = str(Path(sys.executable).with_name("ray"))


class RayCluster:
    """`ray start --head` on 127.0.0.1 with `num_cpus` logical CPUs; `.address` for RAY_ADDRESS."""

    def __init__(self, num_cpus: int, env: dict[str, str] | None = None):
        # Short: Ray's socket paths under it must stay within AF_UNIX's 107 bytes.
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="graft-rayc-", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.num_cpus = num_cpus
        # RAY_ADDRESS in its processes too: Ray's client APIs called without an address inside them would otherwise
        # look for "the" Ray on the machine and find several.
        self.env = {**os.environ, **(env or {}), "RAY_TMPDIR": str(self.ray_tmp), "RAY_ADDRESS": self.address,
                    "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}

    def start(self) -> RayCluster:
        # No dashboard (as the drivers' own local Rays): Ray's state API is off. Ray Train's PlacementGroupCleaner (a
        # detached actor per training run) polls that API until its run's controller is gone and exits when the run
        # ends normally (ray/train/v2/_internal/execution/controller/placement_group_cleaner.py); the cleaner of a
        # training run whose driver is killed would live on for the session, so such tests keep their own Ray.
        # Fixed default ports (the dashboard agent's 52365, the client server's 10001) would clash with any other Ray
        # on the machine: every port is a free one.
        cmd = [RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
               "--num-cpus", str(self.num_cpus), "--num-gpus", "0", "--include-dashboard", "false",
               "--disable-usage-stats", "--dashboard-agent-listen-port", str(free_port()),
               "--ray-client-server-port", str(free_port())]
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return self

    def stop(self) -> None:
        """Kill the cluster's processes (found by its RAY_TMPDIR), then remove its folder."""
        for _ in range(3):  # a worker being spawned as we kill the raylet shows up a moment later
            pids = pids_with_env("RAY_TMPDIR", str(self.ray_tmp))
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)

    def __enter__(self) -> RayCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
