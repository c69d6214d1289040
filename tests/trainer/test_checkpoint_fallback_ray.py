"""On real Ray Train (2 gloo workers, a driver process killed mid-stage): when the run's latest checkpoint was cut
short, the rerun resumes from the newest complete one, says so in one line (both workers' logs, the driver's log,
the ledger) and finishes, instead of failing after Ray's retries with no file named (issue 22, item 3)."""

from __future__ import annotations

import json
import re
import sys

import pytest
from support.driver_proc import DriverProcess
from support.trainer_data import NO_SERVING, SMOKE_CHECKS, job_doc, smallcnn_weights, write_job

from graft import joblogs, storage
from graft.api.models import StageState
from graft.ledger import Ledger

pytestmark = pytest.mark.slow


def _epoch(root: str) -> int:
    try:
        ledger = Ledger.load(root)
    except Exception:
        return 0
    rec = ledger.stage("FullFineTune") if ledger else None
    return rec.epoch if rec is not None and rec.state == StageState.RUNNING else 0


def test_a_cut_short_latest_checkpoint_is_passed_over_for_the_one_before(tmp_path):
    # Its own Ray, killed with the driver: on a shared cluster the killed attempt's workers could still write a
    # checkpoint after the snapshot is read here.
    uid = "ckpt-fallback-1"
    spec = {
        "model": {"backbone": "smallcnn", "numClasses": 10, "weights": str(smallcnn_weights(tmp_path / "w.pt"))},
        "data": {"train": "builtin:digits-noisy", "imageSize": 8},
        "stages": [{"type": "FullFineTune", "epochs": 5, "batchSize": 32, "augment": False}],
        "checks": SMOKE_CHECKS,
        "serving": NO_SERVING,
        "workers": {"replicas": 2, "cpus": "1"},
        "storage": {"uri": str(tmp_path / "jobs")},
    }
    job = write_job(tmp_path / "job.json", job_doc("ckpt-fallback", spec, uid=uid))
    cmd = [sys.executable, "-m", "graft_trainer", "--job", str(job)]
    root = str(tmp_path / "jobs" / uid)
    run = storage.join(root, "checkpoints", f"{uid}-fullfinetune")

    first = DriverProcess(cmd, tmp_path)
    # At epoch 3 in the ledger the checkpoint of epoch 2 (at least) is registered and has its manifest.
    first.wait_for(lambda: _epoch(root) >= 3, 240, "FullFineTune epoch 3")
    first.kill()
    assert _epoch(root) < 5, "the stage finished before the driver was killed"
    # What Ray Train resumes from: the latest checkpoint in its run snapshot
    # (ray/train/v2/_internal/execution/checkpoint/checkpoint_manager.py, `_CheckpointManagerState`).
    snapshot = json.loads(storage.read_bytes(storage.join(run, "checkpoint_manager_snapshot.json")))
    latest = snapshot["latest_checkpoint_result"]["checkpoint_dir_name"]
    state_pt = storage.join(run, latest, "state.pt")
    whole = storage.read_bytes(state_pt)
    storage.write_bytes(state_pt, whole[: len(whole) // 2])

    second = DriverProcess(cmd, tmp_path)
    assert second.wait(300) == 0, second.output()[-3000:]

    fft = Ledger.load(root).stage("FullFineTune")
    assert fft.state == StageState.SUCCEEDED
    assert [h["epoch"] for h in fft.history] == [1.0, 2.0, 3.0, 4.0, 5.0]
    (line,) = fft.notes
    assert line.startswith(f"checkpoint {run}/{latest} is incomplete (state.pt: {len(whole) // 2} bytes, manifest "
                           f"says {len(whole)}): resuming from {run}/epoch_"), line
    resumed_at = int(re.search(r"resuming from .*/epoch_(\d+)$", line).group(1))
    assert resumed_at != int(latest.split("_")[1])
    assert {h["resumed_from"] for h in fft.history if h["epoch"] > resumed_at} == {float(resumed_at)}
    for name in ("driver", "worker-0", "worker-1"):
        text = storage.read_bytes(joblogs.log_uri(root, "FullFineTune", name)).decode()
        assert text.count(line) == 1, f"{name}'s log:\n{text[-3000:]}"
