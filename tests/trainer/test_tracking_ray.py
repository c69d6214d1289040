"""MLflow tracking of real Ray Train jobs (2 gloo workers, each driver a separate process as in a RayJob) against a
real `mlflow server` (SQLite backend, artifacts on the moto S3 server): a job killed mid-stage and rerun continues
the same MLflow run with no duplicate steps and ends with one registered version whose metrics are the ledger's;
a job whose MLflow server stops mid-job still succeeds, and its ledger (hence status) says tracking failed."""

from __future__ import annotations

import os
import sys

import pytest
from mlflow import MlflowClient
from support.driver_proc import DriverProcess
from support.mlflow_server import MlflowServer
from support.s3 import TEST_CREDENTIALS
from support.trainer_data import SMOKE_CHECKS, job_doc, state_dict_bytes, write_job

from graft import storage
from graft.api.models import StageState
from graft.ledger import Ledger

pytestmark = pytest.mark.slow
EPOCHS = 8


def _spec(weights: str, storage_uri: str, mlflow_url: str, epochs: int, model: str) -> dict:
    return {
        "model": {"backbone": "smallcnn", "numClasses": 10, "weights": weights},
        "data": {"train": "builtin:digits-noisy", "imageSize": 32},
        "stages": [
            {"type": "FrozenFeatures"},
            {"type": "FullFineTune", "epochs": epochs, "batchSize": 32, "augment": False},
        ],
        "workers": {"replicas": 2, "cpus": "1"},
        "storage": {"uri": storage_uri},
        "checks": SMOKE_CHECKS,
        "tracking": {"mlflow": {"trackingURI": mlflow_url, "experiment": "graft-ray",
                                "registeredModelName": model}},
    }


def _epoch(root: str, stage: str) -> int:
    try:
        ledger = Ledger.load(root)
    except Exception:
        return 0
    rec = ledger.stage(stage) if ledger else None
    return rec.epoch if rec is not None and rec.state == StageState.RUNNING else 0


def _steps(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_two_workers_killed_mid_stage_and_rerun_continue_one_mlflow_run_and_register_one_version(
        tmp_path, s3_endpoint, s3_bucket, mlflow_server):
    weights = f"{s3_bucket}/weights/smallcnn.pt"
    from graft_trainer.models import SmallCNN

    storage.write_bytes(weights, state_dict_bytes(SmallCNN().state_dict()))
    uid = "c41e-mlflow-resume"
    spec = _spec(weights, f"{s3_bucket}/jobs", mlflow_server.url, EPOCHS, "digits-ray")
    spec["storage"]["endpoint"] = s3_endpoint
    job = write_job(tmp_path / "job.json", job_doc("mlflow-resume", spec, uid=uid))
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"} | TEST_CREDENTIALS
    cmd = [sys.executable, "-m", "graft_trainer", "--job", str(job)]
    root = f"{s3_bucket}/jobs/{uid}"
    client = MlflowClient(mlflow_server.url)

    def stage_run_with_epochs() -> str | None:
        # By tag: the driver records the stage run's id in the ledger at the stage's end, past this kill.
        exp = client.get_experiment_by_name("graft-ray")
        found = client.search_runs([exp.experiment_id], filter_string=f"tags.`graft.dev/job-uid` = '{uid}' and "
                                   "tags.`graft.dev/stage` = 'FullFineTune'") if exp else []
        return found[0].info.run_id if found and client.get_metric_history(found[0].info.run_id, "epoch") else None

    first = DriverProcess(cmd, tmp_path, env)
    # Killed once the running stage's first epochs have reached MLflow (the driver's tracker polls the ledger).
    fft_run = first.wait_for(lambda: _epoch(root, "FullFineTune") >= 1 and stage_run_with_epochs(), 300,
                             "FullFineTune epochs in MLflow")
    first.kill()
    killed_at = Ledger.load(root).stage("FullFineTune").epoch
    assert 1 <= killed_at < EPOCHS, "the stage finished before the driver was killed"
    run_id = Ledger.load(root).tracking.run_id  # recorded when the stage started
    assert run_id

    second = DriverProcess(cmd, tmp_path, env)
    assert second.wait(400) == 0, second.output()[-3000:]
    ledger = Ledger.load(root)
    assert ledger.attempt == 2 and ledger.done
    rec = ledger.tracking
    assert (rec.state, rec.run_id, rec.stage_runs["FullFineTune"]) == ("Succeeded", run_id, fft_run)
    # One run, no duplicate steps: every epoch once, the resumed epochs included.
    assert [s for s, _ in _steps(client, fft_run, "epoch")] == list(range(1, EPOCHS + 1))
    assert [s for s, _ in _steps(client, fft_run, "val_accuracy")] == list(range(1, EPOCHS + 1))
    exp = client.get_run(run_id).info.experiment_id
    assert len(client.search_runs([exp], filter_string=f"tags.`graft.dev/job-uid` = '{uid}'")) == 3  # job + 2 stages
    # Epochs the killed attempt never logged are the resumed attempt's, as in the ledger.
    history = {int(h["epoch"]): h["val_accuracy"] for h in ledger.stage("FullFineTune").history}
    logged = dict(_steps(client, fft_run, "val_accuracy"))
    assert all(logged[e] == history[e] for e in range(killed_at + 1, EPOCHS + 1))

    versions = client.search_model_versions("name = 'digits-ray'")
    assert [v.version for v in versions] == [rec.model_version] == ["1"]
    metrics = {k[len("metric."):]: float(v) for k, v in versions[0].tags.items() if k.startswith("metric.")}
    assert metrics == ledger.stage("FullFineTune").metrics
    assert versions[0].tags["graft.dev/job-uid"] == uid
    assert {a.path for a in client.list_artifacts(run_id, "model")} == {"model/model.pt", "model/model.json"}
    assert client.get_run(run_id).info.status == "FINISHED"


def test_mlflow_stopped_mid_job_the_job_succeeds_and_says_tracking_failed(tmp_path, s3_endpoint, shared_ray):
    # Its own MLflow server (stopped mid-job); the driver joins the session's Ray cluster. The test above kills its
    # driver with its own Ray, as a RayJob's pod dies.
    server = MlflowServer(tmp_path, s3_endpoint, "mlflow-stopped")
    try:
        weights = tmp_path / "smallcnn.pt"
        from graft_trainer.models import SmallCNN

        weights.write_bytes(state_dict_bytes(SmallCNN().state_dict()))
        spec = _spec(str(weights), str(tmp_path / "jobs"), server.url, 4, "digits-stopped")
        job = write_job(tmp_path / "job.json", job_doc("mlflow-stopped", spec, uid="mlflow-stopped-1"))
        root = str(tmp_path / "jobs" / "mlflow-stopped-1")
        # Waited in full at the job's end (a stopped server never answers): the shorter, the sooner the test ends.
        env = {"GRAFT_TRACKING_FINISH_TIMEOUT": "1"}
        driver = DriverProcess([sys.executable, "-m", "graft_trainer", "--job", str(job)], tmp_path, env)
        driver.wait_for(lambda: _epoch(root, "FullFineTune") >= 1, 300, "FullFineTune epoch 1")
        assert Ledger.load(root).tracking.run_id
        server.stop()
        assert driver.wait(400) == 0, driver.output()[-3000:]
    finally:
        server.stop()
    ledger = Ledger.load(root)
    assert ledger.done and ledger.model_uri
    assert ledger.tracking.state == "Failed"
    assert ledger.tracking.model_version is None
    assert ledger.tracking.message.startswith(f"tracking failed: MLflow at {server.url} did not answer")
    assert ledger.to_status()["tracking"]["state"] == "Failed"
    assert "tracking failed" in driver.output()  # logged at the end
