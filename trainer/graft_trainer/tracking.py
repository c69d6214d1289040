"""MLflow tracking and registry of a job (`spec.tracking.mlflow`), kept in step with the ledger.

One MLflow run per job (tagged with the job's namespace, name and uid) and one nested run per stage: the resolved
spec as params, each epoch's metrics from the ledger's history with the epoch as step, and at the end the exported
model and `curves.png` as artifacts and a new version of the registered model, tagged with the job and its metrics.

All MLflow calls run on one background thread of the driver, which brings MLflow up to the ledger every few
seconds (the workers write the ledger; the driver is blocked in `fit` meanwhile). Each pass is idempotent: the
runs are found again by id (recorded in the ledger) or by tag, and only epochs above the highest step MLflow
already holds are logged, so a killed-and-rerun job continues the same runs with no duplicate steps. MLflow being
down never fails training: a failed pass is retried with exponential backoff, and `finish` gives up after its
timeout and says so in the record (ledger, then `status.tracking`).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from graft import storage
from graft.api.models import MlflowSpec, StageState, TransferJob
from graft.ledger import Ledger, TrackingRecord

log = logging.getLogger("graft_trainer.tracking")

TAG_UID, TAG_NAME, TAG_NAMESPACE = "graft.dev/job-uid", "graft.dev/job-name", "graft.dev/job-namespace"
TAG_KIND, TAG_STAGE, TAG_RESETS = "graft.dev/kind", "graft.dev/stage", "graft.dev/resets"
#: Seconds between passes while the job runs, and the longest wait between retries of a failed pass.
POLL_S, MAX_BACKOFF_S = 3.0, 30.0
#: The run's artifact folder of the ONNX model (MLflow's ONNX flavour); the registered version points at it.
ONNX_ARTIFACT = "onnx_model"
#: How long `finish` keeps retrying the last pass (the exported model, the registration) before it gives up.
FINISH_TIMEOUT_S = float(os.environ.get("GRAFT_TRACKING_FINISH_TIMEOUT", "120"))
#: How long a stage's start waits for the job's MLflow run to exist (its id goes in the ledger with the stage).
STARTED_TIMEOUT_S = 10.0
# MLflow's own HTTP retries (default 7, backoff factor 2: minutes per call) are cut short: a pass that fails is
# retried as a whole by the loop here, with its own backoff, and the job never waits on one call for long.
_CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """A nested spec as MLflow params: `stages.1.epochs` -> `"10"`; empty values are left out."""
    out: dict[str, str] = {}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else None
    if items is None:
        return {prefix: str(value)} if value is not None else {}
    for k, v in items:
        out |= flatten(v, f"{prefix}.{k}" if prefix else str(k))
    return out


def describe(exc: BaseException) -> str:
    """One line saying why an MLflow call failed (the URL is in it, never credentials: the spec forbids them)."""
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text[:300]


class Tracker:
    """Keeps one job's MLflow runs in step with its ledger, on a background thread."""

    def __init__(self, spec: MlflowSpec, job: TransferJob, params: dict[str, Any], root: str, uid: str,
                 record: TrackingRecord | None, resets: int = 0, poll: float = POLL_S):
        for key, value in _CLIENT_ENV.items():
            os.environ.setdefault(key, value)
        from mlflow import MlflowClient

        self.spec, self.root, self.uid, self.resets, self.poll = spec, root, uid, resets, poll
        self.params = flatten(params)
        self.tags = {TAG_UID: uid, TAG_NAME: job.metadata.name or uid, TAG_NAMESPACE: job.metadata.namespace or "",
                     TAG_RESETS: str(resets)}
        same = record is not None and record.tracking_uri == spec.tracking_uri
        self.record = record.model_copy(deep=True) if same else TrackingRecord(tracking_uri=spec.tracking_uri)
        self.record.state, self.record.message = "Tracking", None
        self.client = MlflowClient(spec.tracking_uri)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._answered = threading.Event()  # the job's run exists, or MLflow failed to answer: see `started`
        self._stop = False
        self._final: Ledger | None = None
        self._done = False
        self._error: str | None = None
        self._params_done = False
        self._logged: dict[str, int] = {}  # stage -> highest step MLflow holds for it
        self._closed: set[str] = set()
        self._model_logged = False
        self._thread = threading.Thread(target=self._loop, name="graft-mlflow", daemon=True)

    # -- the driver's side ---------------------------------------------------------------------

    def start(self) -> Tracker:
        self._thread.start()
        return self

    def started(self, timeout: float = STARTED_TIMEOUT_S) -> None:
        """Wait (at most `timeout`) until the job's MLflow run exists or MLflow failed to answer once, so that a stage's
        start records the run's id in the ledger: a driver killed mid-stage leaves it there. Never raises."""
        self._answered.wait(timeout)

    def snapshot(self) -> TrackingRecord:
        """The record as it stands (the driver writes it into the ledger when it saves)."""
        with self._lock:
            rec = self.record.model_copy(deep=True)
            if self._error:
                rec.message = f"MLflow at {self.spec.tracking_uri} unreachable, retrying: {self._error}"
            return rec

    def finish(self, ledger: Ledger, timeout: float | None = None) -> TrackingRecord:
        """A last pass with the final ledger (artifacts, registration, runs ended), retried until `timeout`
        (FINISH_TIMEOUT_S); the record says Succeeded, or Failed and why. Never raises."""
        timeout = FINISH_TIMEOUT_S if timeout is None else timeout
        with self._lock:
            self._final = ledger
        self._wake.set()
        self._thread.join(timeout)
        with self._lock:
            self._stop = True
            self._wake.set()
            rec = self.record.model_copy(deep=True)
            if self._done:
                rec.state, rec.message = "Succeeded", None
                log.info("tracking: MLflow run %s at %s%s", rec.run_id, rec.tracking_uri,
                         f", model {rec.registered_model} version {rec.model_version}" if rec.model_version else "")
            else:
                rec.state = "Failed"
                rec.message = (f"tracking failed: MLflow at {self.spec.tracking_uri} did not answer within "
                               f"{timeout:.0f}s of the job's end ({self._error or 'no answer'}); the job's results "
                               "are in its storage, not all of them in MLflow")
                log.warning("%s", rec.message)
            return rec

    def stop(self) -> None:
        """Stop without a last pass (the job is interrupted, to be resumed): the runs stay open."""
        with self._lock:
            self._stop = True
        self._wake.set()

    # -- the thread ----------------------------------------------------------------------------

    def _loop(self) -> None:
        wait = self.poll
        while True:
            with self._lock:
                if self._stop:
                    return
                final = self._final
            try:
                ledger = final or Ledger.load(self.root)
                if ledger is not None:
                    self._sync(ledger, final=final is not None)
                if final is not None:
                    with self._lock:
                        self._done, self._error = True, None
                    return
                with self._lock:
                    self._error = None
                wait = self.poll
            except Exception as exc:  # MLflow (or storage) down: retried with backoff, never raised to training
                message = describe(exc)
                if message != self._error:
                    log.warning("MLflow tracking at %s failed, retrying: %s", self.spec.tracking_uri, message)
                with self._lock:
                    self._error = message
                self._answered.set()
                wait = min(wait * 2, MAX_BACKOFF_S)
            self._wake.wait(wait)
            self._wake.clear()

    def _sync(self, ledger: Ledger, final: bool) -> None:
        """Bring MLflow up to `ledger`; each step is skipped when already done."""
        run_id = self._job_run()
        for rec in ledger.stages:
            if rec.state == StageState.PENDING and not rec.history:
                continue
            stage_run = self._stage_run(rec.type, run_id)
            self._log_epochs(rec.type, stage_run, rec.history)
            ended = rec.state in (StageState.SUCCEEDED, StageState.FAILED, StageState.SKIPPED)
            if ended and rec.type not in self._closed:
                if rec.metrics:  # the stage's result (its best epoch's metrics), apart from the per-epoch curves
                    self._log_metrics(stage_run, {f"best_{k}" if k != "best_epoch" else k: v
                                                  for k, v in rec.metrics.items()})
                self.client.set_terminated(stage_run, "FAILED" if rec.state == StageState.FAILED else "FINISHED")
                self._closed.add(rec.type)
        if final:
            self._finish_run(ledger, run_id)

    def _job_run(self) -> str:
        if self.record.experiment_id is None:
            exp = self.client.get_experiment_by_name(self.spec.experiment)
            if exp is None:
                try:
                    eid = self.client.create_experiment(self.spec.experiment)
                except Exception:  # created meanwhile by another job
                    exp = self.client.get_experiment_by_name(self.spec.experiment)
                    if exp is None:
                        raise
                    eid = exp.experiment_id
            else:
                eid = exp.experiment_id
            with self._lock:
                self.record.experiment_id = eid
        if self.record.run_id is None:
            # Found by tag when a killed attempt created it but never recorded it in the ledger.
            run_id = self._find({TAG_UID: self.uid, TAG_RESETS: str(self.resets), TAG_KIND: "job"})
            if run_id is None:
                run_id = self.client.create_run(self.record.experiment_id, run_name=self.tags[TAG_NAME],
                                                tags={**self.tags, TAG_KIND: "job"}).info.run_id
            with self._lock:
                self.record.run_id = run_id
        self._answered.set()
        if not self._params_done:
            have = self.client.get_run(self.record.run_id).data.params
            # Params never change in MLflow: a retry with another spec (only a non-determining field can differ)
            # keeps the first values.
            missing = [(k, v[:6000]) for k, v in self.params.items() if k not in have]
            from mlflow.entities import Param

            for i in range(0, len(missing), 100):
                self.client.log_batch(self.record.run_id, params=[Param(k, v) for k, v in missing[i : i + 100]])
            self._params_done = True
        return self.record.run_id

    def _find(self, tags: dict[str, str]) -> str | None:
        where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        found = self.client.search_runs([self.record.experiment_id], filter_string=where, max_results=1)
        return found[0].info.run_id if found else None

    def _stage_run(self, stage: str, run_id: str) -> str:
        sid = self.record.stage_runs.get(stage)
        if sid is None:
            sid = self._find({TAG_UID: self.uid, TAG_RESETS: str(self.resets), TAG_KIND: "stage", TAG_STAGE: stage})
            if sid is None:
                tags = {**self.tags, TAG_KIND: "stage", TAG_STAGE: stage, "mlflow.parentRunId": run_id}
                sid = self.client.create_run(self.record.experiment_id, run_name=stage, tags=tags).info.run_id
            with self._lock:
                self.record.stage_runs[stage] = sid
        if stage not in self._logged:
            history = self.client.get_metric_history(sid, "epoch")
            self._logged[stage] = int(max((m.step for m in history), default=0))
        return sid

    def _log_epochs(self, stage: str, run_id: str, history: list[dict[str, float]]) -> None:
        from mlflow.entities import Metric

        new = [h for h in history if int(h.get("epoch", 0)) > self._logged[stage]]
        if not new:
            return
        stamp = int(time.time() * 1000)
        metrics = [Metric(k, float(v), stamp, int(h["epoch"])) for h in new for k, v in h.items()
                   if k != "resumed_from" and math.isfinite(v)]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i : i + 1000])
        self._logged[stage] = max(int(h["epoch"]) for h in new)

    def _log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        finite = [Metric(k, float(v), stamp, 0) for k, v in metrics.items() if math.isfinite(v)]
        if finite:
            self.client.log_batch(run_id, metrics=finite)

    def _finish_run(self, ledger: Ledger, run_id: str) -> None:
        """The job's end: curves, the model and its metrics, the registered version, the run ended."""
        from graft_trainer.plot import plot_curves

        metrics: dict[str, float] = {}
        if ledger.model_uri:
            metrics = storage.read_json(storage.join(ledger.model_uri, "model.json")).get("metrics") or {}
        if not self._model_logged:
            self._log_artifacts(ledger, run_id, plot_curves(ledger), metrics)
            self._model_logged = True
        if ledger.model_uri and self.spec.registered_model_name and self.record.model_version is None:
            self._register(run_id, metrics, ledger.model_uri)
        self.client.set_terminated(run_id, "FINISHED" if ledger.done else "FAILED")

    def _log_artifacts(self, ledger: Ledger, run_id: str, curves: bytes, metrics: dict[str, float]) -> None:
        with tempfile.TemporaryDirectory(prefix="graft-mlflow-") as tmp:
            png = Path(tmp, "curves.png")
            png.write_bytes(curves)
            self.client.log_artifact(run_id, str(png))
            if ledger.model_uri:
                model = Path(tmp, "model")
                model.mkdir()
                for name in ("model.pt", "model.json"):
                    (model / name).write_bytes(storage.read_bytes(storage.join(ledger.model_uri, name)))
                self.client.log_artifacts(run_id, str(model), "model")
                self._log_onnx(ledger.model_uri, run_id, Path(tmp, ONNX_ARTIFACT))
        self._log_metrics(run_id, metrics)

    @staticmethod
    def _onnx_file(model_uri: str | None) -> str | None:
        """The model folder's ONNX file (model.json's `onnx` block, graft_trainer/serving.py), or None."""
        if not model_uri:
            return None
        block = storage.read_json(storage.join(model_uri, "model.json")).get("onnx")
        return storage.join(model_uri, block["file"]) if block else None

    def _log_onnx(self, model_uri: str, run_id: str, path: Path) -> None:
        """The ONNX model with MLflow's ONNX flavour (`mlflow.onnx`: MLmodel, model.onnx, requirements) under the
        run's `onnx_model` artifacts, when the job wrote one."""
        file = self._onnx_file(model_uri)
        if file is None:
            return
        import mlflow.onnx
        import onnx
        import onnxruntime

        # Requirements named here: MLflow's inference of them imports the model's code, slow and noisy.
        mlflow.onnx.save_model(onnx.load_model_from_string(storage.read_bytes(file)), str(path),
                               pip_requirements=[f"onnx=={onnx.__version__}",
                                                 f"onnxruntime=={onnxruntime.__version__}"],
                               save_as_external_data=False)
        self.client.log_artifacts(run_id, str(path), ONNX_ARTIFACT)

    def _register(self, run_id: str, metrics: dict[str, float], model_uri: str | None) -> None:
        name = self.spec.registered_model_name
        assert name is not None
        if not self.client.search_registered_models(filter_string=f"name = '{name}'"):
            try:
                self.client.create_registered_model(name)
            except Exception:  # registered meanwhile by another job
                if not self.client.search_registered_models(filter_string=f"name = '{name}'"):
                    raise
        # One version per run: a pass retried after the version was created (answer lost) finds it.
        found = self.client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        if found:
            version = found[0].version
        else:
            tags = {**{k: v for k, v in self.tags.items() if k != TAG_RESETS},
                    **{f"metric.{k}": repr(float(v)) for k, v in metrics.items()}}
            # The ONNX flavour when the job wrote one (served as it is), else the PyTorch model folder.
            logged = ONNX_ARTIFACT if self._onnx_file(model_uri) else "model"
            source = f"{self.client.get_run(run_id).info.artifact_uri}/{logged}"
            version = self.client.create_model_version(name, source, run_id=run_id, tags=tags).version
        with self._lock:
            self.record.registered_model, self.record.model_version = name, str(version)


def start(job: TransferJob, params: dict[str, Any], root: str, uid: str, ledger: Ledger) -> Tracker | None:
    """The job's tracker, started; None when the job asks for no tracking."""
    tracking = job.spec.tracking
    if tracking is None or tracking.mlflow is None:
        return None
    return Tracker(tracking.mlflow, job, params, root, uid, ledger.tracking, ledger.resets).start()


def not_started(job: TransferJob, exc: BaseException) -> TrackingRecord | None:
    """The record of a tracker that could not even start (the job runs on untracked)."""
    mlflow = job.spec.tracking.mlflow if job.spec.tracking else None
    if mlflow is None:
        return None
    message = f"tracking failed: the MLflow client could not start: {describe(exc)}"
    log.warning("%s", message)
    return TrackingRecord(tracking_uri=mlflow.tracking_uri, state="Failed", message=message)
