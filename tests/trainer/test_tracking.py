"""MLflow tracking and registry (`spec.tracking.mlflow`) against a real `mlflow server` (SQLite backend, artifacts
on the moto S3 server), with jobs run in-process (`LocalExecutor`) on a few labels of the built-in digits."""

from __future__ import annotations

import copy

import pytest
from mlflow import MlflowClient
from support.trainer_data import SMOKE_CHECKS, job_doc

from graft.api.models import StageState, TransferJob
from graft.ledger import Ledger, job_root
from graft_trainer import tracking
from graft_trainer.driver import Driver, StageFailed
from graft_trainer.executors import LocalExecutor

SPEC = {
    "model": {"backbone": "smallcnn", "numClasses": 10},
    "data": {"train": "builtin:digits-noisy", "imageSize": 8, "shotsPerClass": 2},
    "stages": [
        {"type": "Pretrain", "data": "builtin:digits-clean", "numClasses": 10, "epochs": 1, "batchSize": 128},
        {"type": "FrozenFeatures"},
        {"type": "Head", "epochs": 3},
        {"type": "FullFineTune", "epochs": 2, "batchSize": 16, "lr": 0.003},
    ],
    "checks": SMOKE_CHECKS,
}


def _job(name: str, uri: str, model: str | None = None, uid: str | None = None) -> TransferJob:
    spec = copy.deepcopy(SPEC)
    spec["tracking"] = {"mlflow": {"trackingURI": uri, "experiment": "graft-tests",
                                   **({"registeredModelName": model} if model else {})}}
    doc = job_doc(name, spec, uid=uid)
    doc["metadata"]["namespace"] = "ml-team"
    return TransferJob.model_validate(doc)


def _children(client: MlflowClient, run_id: str) -> dict[str, object]:
    exp = client.get_run(run_id).info.experiment_id
    found = client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'")
    return {r.info.run_name: r for r in found}


def _steps(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_a_tracked_job_logs_one_run_nested_stage_runs_and_registers_a_version_with_the_ledgers_metrics(
        tmp_path, mlflow_server):
    job = _job("digits-tracked", mlflow_server.url, model="digits-classifier", uid="uid-tracked-1")
    ledger = Driver(job, str(tmp_path), executor=LocalExecutor()).run()

    rec = ledger.tracking
    assert (rec.state, rec.message, rec.registered_model) == ("Succeeded", None, "digits-classifier")
    assert Ledger.load(job_root(str(tmp_path), "uid-tracked-1")).tracking == rec
    client = MlflowClient(mlflow_server.url)
    run = client.get_run(rec.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[tracking.TAG_UID] == "uid-tracked-1"
    # The resolved spec as params, defaults filled in.
    assert run.data.params["stages.2.epochs"] == "3"
    assert run.data.params["model.backbone"] == "smallcnn"
    assert "workers.replicas" in run.data.params
    stages = _children(client, rec.run_id)
    assert set(stages) == {"Pretrain", "FrozenFeatures", "Head", "FullFineTune"}
    assert {t: r.info.run_id for t, r in stages.items()} == rec.stage_runs
    for t in ("Head", "FullFineTune"):
        history = ledger.stage(t).history
        assert _steps(client, rec.stage_runs[t], "val_accuracy") == [(int(h["epoch"]), h["val_accuracy"])
                                                                    for h in history]
        assert _steps(client, rec.stage_runs[t], "train_loss") == [(int(h["epoch"]), h["train_loss"])
                                                                  for h in history]
    artifacts = {a.path for a in client.list_artifacts(rec.run_id)} | {
        a.path for a in client.list_artifacts(rec.run_id, "model")}
    assert {"curves.png", "model/model.pt", "model/model.json"} <= artifacts

    versions = client.search_model_versions("name = 'digits-classifier'")
    assert [v.version for v in versions] == [rec.model_version] == ["1"]
    version = versions[0]
    assert version.run_id == rec.run_id
    assert (version.tags[tracking.TAG_NAMESPACE], version.tags[tracking.TAG_NAME], version.tags[tracking.TAG_UID]) \
        == ("ml-team", "digits-tracked", "uid-tracked-1")
    final = ledger.stage("FullFineTune").metrics
    assert {k[len("metric."):]: float(v) for k, v in version.tags.items() if k.startswith("metric.")} == final
    assert {k: run.data.metrics[k] for k in final} == final


def test_a_retried_job_continues_the_same_run_with_no_duplicate_steps(tmp_path, mlflow_server):
    class FailFullFineTuneOnce(LocalExecutor):
        failed = False

        def fit(self, loop, cfg, keep):
            if cfg.stage.type == "FullFineTune" and not FailFullFineTuneOnce.failed:
                FailFullFineTuneOnce.failed = True
                raise RuntimeError("worker lost")
            return super().fit(loop, cfg, keep)

    job = _job("digits-retried", mlflow_server.url, model="digits-retried", uid="uid-retried-1")
    with pytest.raises(StageFailed):
        Driver(job, str(tmp_path), executor=FailFullFineTuneOnce()).run()
    first = Ledger.load(job_root(str(tmp_path), "uid-retried-1"))
    assert first.stage("FullFineTune").state == StageState.FAILED
    assert first.tracking.run_id and first.tracking.state == "Succeeded"  # everything up to the failure logged

    second = Driver(job, str(tmp_path), executor=FailFullFineTuneOnce()).run()
    assert second.tracking.run_id == first.tracking.run_id
    assert second.tracking.stage_runs == first.tracking.stage_runs
    client = MlflowClient(mlflow_server.url)
    assert len(_children(client, first.tracking.run_id)) == 4
    head = first.tracking.stage_runs["Head"]
    assert [s for s, _ in _steps(client, head, "val_accuracy")] == [1, 2, 3]
    fft = second.stage("FullFineTune").history
    assert _steps(client, second.tracking.stage_runs["FullFineTune"], "val_accuracy") == [
        (int(h["epoch"]), h["val_accuracy"]) for h in fft]
    assert client.get_run(second.tracking.run_id).info.status == "FINISHED"
    assert [v.version for v in client.search_model_versions("name = 'digits-retried'")] == ["1"]


def test_mlflow_unreachable_never_fails_the_job_and_the_ledger_says_tracking_failed(tmp_path, monkeypatch):
    from support.s3 import free_port

    # Waited in full at the job's end (nothing listens on the port): the shorter, the sooner the test ends.
    monkeypatch.setattr(tracking, "FINISH_TIMEOUT_S", 1.0)
    job = _job("digits-untracked", f"http://127.0.0.1:{free_port()}", model="never", uid="uid-down-1")
    ledger = Driver(job, str(tmp_path), executor=LocalExecutor()).run()
    assert ledger.done and ledger.model_uri
    assert ledger.tracking.state == "Failed"
    assert ledger.tracking.run_id is None and ledger.tracking.model_version is None
    assert "tracking failed" in ledger.tracking.message and "127.0.0.1" in ledger.tracking.message
    status = ledger.to_status()["tracking"]
    assert status["state"] == "Failed" and status["message"] == ledger.tracking.message


def test_a_tracker_that_cannot_start_leaves_the_job_running_and_says_why(tmp_path, monkeypatch):
    def broken(*_a, **_k):
        raise ImportError("No module named 'mlflow'")

    monkeypatch.setattr(tracking, "Tracker", broken)
    job = _job("digits-no-client", "http://127.0.0.1:9", uid="uid-no-client")
    ledger = Driver(job, str(tmp_path), executor=LocalExecutor()).run()
    assert ledger.done and ledger.model_uri
    assert ledger.tracking.state == "Failed"
    assert ledger.tracking.message == "tracking failed: the MLflow client could not start: No module named 'mlflow'"


def test_an_interrupted_run_does_not_wait_on_mlflow(tmp_path, monkeypatch):
    import time

    from support.s3 import free_port

    class Interrupted(LocalExecutor):
        def fit(self, loop, cfg, keep):
            raise KeyboardInterrupt

    monkeypatch.setattr(tracking, "FINISH_TIMEOUT_S", 60.0)
    job = _job("digits-interrupted", f"http://127.0.0.1:{free_port()}", uid="uid-interrupted")
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        Driver(job, str(tmp_path), executor=Interrupted()).run()
    assert time.monotonic() - started < 30  # the finish pass would wait the whole 60 s for the server
