"""gs:// end to end on real Ray Train (2 gloo workers) against a real GCS emulator (fake-gcs-server): storage and a
manifest table (a CSV and the images it lists) on gs://, the driver killed mid-stage with SIGKILL (it and its Ray die
together, as a RayJob's submitter pod does) and the same command resuming, as the S3 test does
(test_ray_e2e.py `test_s3_two_workers_driver_killed_mid_stage_resumes_from_checkpoint`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.driver_proc import DriverProcess
from support.gcs import EMULATOR_ENV, object_names
from support.trainer_data import NO_SERVING, job_doc, smallcnn_weights, write_job, write_manifest

from graft import storage
from graft.api.models import StageState
from graft.ledger import Ledger

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
GRAFT = str(Path(sys.executable).with_name("graft"))
EPOCHS = 12


def _epoch(root: str, stage: str) -> int:
    try:
        ledger = Ledger.load(root)
    except Exception:
        return 0
    rec = ledger.stage(stage) if ledger is not None else None
    return rec.epoch if rec is not None and rec.state == StageState.RUNNING else 0


@pytest.fixture()
def job_endpoint():
    """This process's storage settings back to the environment's after the test."""
    yield
    storage.use_endpoint(None)


def test_gs_two_workers_manifest_driver_killed_mid_stage_resumes_from_checkpoint(tmp_path, gcs_endpoint, gcs_bucket,
                                                                                  monkeypatch, job_endpoint):
    weights = f"{gcs_bucket}/weights/smallcnn.pt"
    storage.write_bytes(weights, smallcnn_weights(tmp_path / "w.pt").read_bytes())
    uid = "7c4e-gs-resume"
    manifest = write_manifest(tmp_path, f"{gcs_bucket}/birds", 24)  # a CSV on gs:// listing 3 x 24 PNGs beside it
    spec = {
        "model": {"backbone": "smallcnn", "numClasses": 3, "weights": weights},
        "data": {"train": manifest, "pathColumn": "file", "labelColumn": "kind",
                 "imageSize": 16, "validationSplit": 0.25},
        "stages": [{"type": "FrozenFeatures"},
                   {"type": "FullFineTune", "epochs": EPOCHS, "batchSize": 8, "augment": False}],
        "workers": {"replicas": 2, "cpus": "1"},
        "storage": {"uri": f"{gcs_bucket}/jobs", "endpoint": gcs_endpoint},
        "serving": NO_SERVING,
    }
    job = write_job(tmp_path / "job.json", job_doc("gs-resume", spec, uid=uid))
    # The endpoint comes from the spec alone (the driver hands it to Ray's workers); no Google credentials at all.
    # DriverProcess starts from this process's environment, so the emulator's variable leaves it (this process's own
    # reads get the endpoint as a driver does, through use_endpoint).
    monkeypatch.delenv(EMULATOR_ENV)
    storage.use_endpoint(gcs_endpoint, None, gcs_bucket)
    env = {"GRAFT_JOB": job.read_text()}
    cmd = [sys.executable, "-m", "graft_trainer", "--job-env", "GRAFT_JOB"]
    root = f"{gcs_bucket}/jobs/{uid}"

    first = DriverProcess(cmd, tmp_path, env, REPO)
    first.wait_for(lambda: _epoch(root, "FullFineTune") >= 2, 300, "FullFineTune epoch 2")
    first.kill()
    before = Ledger.load(root)
    killed_at = before.stage("FullFineTune").epoch
    assert before.stage("FullFineTune").state == StageState.RUNNING
    assert 2 <= killed_at < EPOCHS, "the stage finished before the driver was killed"
    features_done = before.stage("FrozenFeatures").end_time
    assert features_done

    second = DriverProcess(cmd, tmp_path, env, REPO)
    assert second.wait(400) == 0, second.output()[-3000:]
    after = Ledger.load(root)
    assert after.attempt == 2
    assert [s.state for s in after.stages] == [StageState.SUCCEEDED] * 2
    assert after.stage("FrozenFeatures").end_time == features_done, "a finished stage must not run again"
    assert after.stage("FrozenFeatures").metrics["train_images"] == 54  # 72 listed, a quarter held for validation
    fft = after.stage("FullFineTune")
    assert [h["epoch"] for h in fft.history] == [float(e) for e in range(1, EPOCHS + 1)]
    resumed = {h["resumed_from"] for h in fft.history if h["epoch"] > killed_at}
    assert len(resumed) == 1 and killed_at - 1 <= resumed.pop() <= killed_at, f"resumed from {resumed}"
    assert after.model_uri == f"{root}/model"
    assert fft.checkpoint.startswith(f"{root}/checkpoints/{uid}-fullfinetune/epoch_")
    assert storage.read_json(f"{after.model_uri}/model.json")["labels"] == ["cat", "dog", "owl"]

    # Everything is in the bucket, seen through the emulator's own JSON API rather than through pyarrow.
    prefix = f"jobs/{uid}/"
    names = object_names(gcs_endpoint, gcs_bucket[len("gs://"):], prefix)
    assert {prefix + n for n in ("ledger.json", "model/model.pt", "model/model.json", "features/train.pt",
                                 "features/val.pt")} <= names, sorted(names)[:20]
    assert any(n.startswith(f"{prefix}checkpoints/{uid}-fullfinetune/epoch_") and n.endswith("state.pt")
               for n in names)

    # The logs outlive the Ray processes: `graft logs` reads both attempts' driver lines and the workers' from gs://.
    second.reap_ray()
    shown = subprocess.run([GRAFT, "logs", root], env={**os.environ, EMULATOR_ENV: gcs_endpoint}, capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert {line.split(" | ")[0] for line in lines} >= {"FullFineTune/driver", "FullFineTune/worker-0",
                                                        "FullFineTune/worker-1"}
    started = [line for line in lines if line.startswith("FullFineTune/driver |") and ", attempt " in line]
    assert [line.rsplit(" ", 1)[1] for line in started] == ["1", "2"], "the killed attempt's driver log was lost"
