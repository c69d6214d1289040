"""The RayJob entrypoint's refusals (`python -m graft_trainer`): the job comes from --job or --job-env, and a
missing or invalid one exits 2 with a message that says where it looked, before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def entrypoint(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "GRAFT_JOB"}
    return subprocess.run([sys.executable, "-m", "graft_trainer", *args], capture_output=True, text=True, timeout=60,
                          env={**clean, **env})


@pytest.mark.parametrize(("args", "env", "says"), [
    (("--job-env", "GRAFT_JOB"), {}, "error: the environment has no GRAFT_JOB (the job, as JSON)"),
    (("--job-env", "GRAFT_JOB"), {"GRAFT_JOB": '{"kind": "TransferJob"}'}, "error: $GRAFT_JOB: invalid TransferJob"),
    (("--job", "/nonexistent/job.json"), {}, "error: /nonexistent/job.json: cannot read the job file"),
    ((), {}, "one of the arguments --job --job-env is required"),
], ids=["env-missing", "env-invalid", "file-missing", "neither"])
def test_a_job_that_cannot_be_read_exits_2_saying_where(args, env, says):
    proc = entrypoint(*args, **env)
    assert proc.returncode == 2
    assert says in proc.stderr
