"""`graft logs` as a user runs it (a real subprocess) on a job's storage: which files, in which order, narrowed by
stage and worker, and followed until the job ends."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from graft import joblogs, storage
from graft.api.models import StageState
from graft.ledger import Ledger

STAGES = ["FrozenFeatures", "Head", "FullFineTune"]


def graft(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "graft.cli", *args], capture_output=True, text=True, timeout=timeout)


def _job(tmp_path, state: StageState = StageState.SUCCEEDED, folder: str = "job") -> str:
    root = str(tmp_path / folder)
    ledger = Ledger.create("uid-1", "logs-demo", STAGES)
    for s in ledger.stages:
        s.state = state
    ledger.save(root)
    for stage, name, text in [
        ("FullFineTune", "worker-1", "fft w1 epoch 1\n"),
        ("FullFineTune", "worker-0", "fft w0 epoch 1\nfft w0 epoch 2\n"),
        ("FullFineTune", "driver", "fft driver started\n"),
        ("FrozenFeatures", "driver", "features driver\n"),
        ("Head", "worker-0", "head w0\n"),
        ("Head", "driver", "head driver\n"),
    ]:
        storage.write_bytes(joblogs.log_uri(root, stage, name), text.encode())
    return root


def test_every_stage_in_the_specs_order_driver_first_each_line_labelled(tmp_path):
    root = _job(tmp_path)
    for target in (root, f"{root}/logs", f"file://{root}/"):
        proc = graft("logs", target)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines() == [
            "FrozenFeatures/driver | features driver",
            "Head/driver | head driver",
            "Head/worker-0 | head w0",
            "FullFineTune/driver | fft driver started",
            "FullFineTune/worker-0 | fft w0 epoch 1",
            "FullFineTune/worker-0 | fft w0 epoch 2",
            "FullFineTune/worker-1 | fft w1 epoch 1",
        ], target


def test_a_job_named_logs_is_its_own_root(tmp_path):
    # `graft run` keeps a local job named `logs` in graft-runs/logs and prints `graft logs graft-runs/logs`.
    root = _job(tmp_path, folder="logs")
    for target in (root, f"{root}/logs"):
        proc = graft("logs", target, "--stage", "Head", "--worker", "0")
        assert (proc.returncode, proc.stdout) == (0, "head w0\n"), (target, proc.stderr)


def test_stage_and_worker_narrow_it_down(tmp_path):
    root = _job(tmp_path)
    assert graft("logs", root, "--stage", "fullfinetune", "--worker", "0").stdout == "fft w0 epoch 1\nfft w0 epoch 2\n"
    assert graft("logs", root, "--worker", "0").stdout.splitlines() == [
        "Head/worker-0 | head w0", "FullFineTune/worker-0 | fft w0 epoch 1", "FullFineTune/worker-0 | fft w0 epoch 2"]
    missing = graft("logs", root, "--stage", "Head", "--worker", "3")
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"error: no logs of stage Head worker 3 in {root}/logs"


def test_a_folder_that_is_no_job_says_so(tmp_path):
    proc = graft("logs", str(tmp_path))
    assert proc.returncode == 1
    assert "no logs in" in proc.stderr and "no ledger.json" in proc.stderr


def test_follow_prints_lines_as_they_come_and_stops_when_the_job_ends(tmp_path):
    root = _job(tmp_path, StageState.RUNNING)
    uri = joblogs.log_uri(root, "FullFineTune", "worker-0")

    def the_job_goes_on():
        time.sleep(2)
        storage.write_bytes(uri, b"fft w0 epoch 1\nfft w0 epoch 2\nfft w0 epoch 3\n")
        time.sleep(2)
        ledger = Ledger.load(root)
        for s in ledger.stages:
            s.state = StageState.SUCCEEDED
        ledger.save(root)

    job = threading.Thread(target=the_job_goes_on)
    job.start()
    proc = graft("logs", root, "--stage", "FullFineTune", "--follow", timeout=30)
    job.join()
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines.count("FullFineTune/worker-0 | fft w0 epoch 1") == 1, "a line printed again when the file grew"
    assert "FullFineTune/worker-0 | fft w0 epoch 3" in lines


def test_graft_status_says_where_the_logs_are(tmp_path):
    root = _job(tmp_path)
    assert f"logs: {root}/logs   (graft logs {root})" in graft("status", root).stdout.splitlines()
    bare = str(tmp_path / "bare")
    Ledger.create("uid-2", "no-logs", STAGES).save(bare)
    assert "logs:" not in graft("status", bare).stdout
