"""With tracking on, the ONNX model is logged with MLflow's ONNX flavour and the registered version points at it,
against a real `mlflow server` (SQLite backend, artifacts on the moto S3 server)."""

from __future__ import annotations

import mlflow.artifacts
import mlflow.pyfunc
import numpy as np
import torch
from mlflow import MlflowClient
from support.trainer_data import job_doc

from graft.api.models import TransferJob
from graft.ledger import Ledger
from graft_trainer import export, models, serving, tracking

LABELS = ["a", "b", "c"]


def test_the_registered_version_is_the_onnx_flavour_and_predicts_like_graft_predict(tmp_path, mlflow_server):
    spec = {"model": {"backbone": "smallcnn", "numClasses": 3},
            "data": {"train": "builtin:digits", "imageSize": 8},
            "stages": [{"type": "Pretrain", "data": "builtin:digits", "numClasses": 3}],
            "tracking": {"mlflow": {"trackingURI": mlflow_server.url, "experiment": "graft-onnx",
                                    "registeredModelName": "digits-onnx"}}}
    job = TransferJob.model_validate(job_doc("digits-onnx", spec, uid="uid-onnx-1"))
    torch.manual_seed(0)
    net = models.build("smallcnn", 3, 8)
    meta = {"architecture": "smallcnn", "num_classes": 3, "labels": LABELS, "temperature": 1.5,
            "preprocessing": {"image_size": 8, "mean": [0.5] * 3, "std": [0.5] * 3},
            "job": {"name": "digits-onnx", "uid": "uid-onnx-1"}, "metrics": {"val_accuracy": 0.5}}
    root = str(tmp_path / "uid-onnx-1")
    uri = export.export_model(root, net.state_dict(), meta)
    serving.export_serving(uri, job)  # what the job's end writes (serving.export_after_job)
    ledger = Ledger(job_uid="uid-onnx-1", job_name="digits-onnx", stages=[], model_uri=uri)

    tracker = tracking.start(job, {}, root, "uid-onnx-1", ledger)
    rec = tracker.finish(ledger, timeout=180)
    assert (rec.state, rec.message, rec.model_version) == ("Succeeded", None, "1")

    client = MlflowClient(mlflow_server.url)
    [version] = client.search_model_versions("name = 'digits-onnx'")
    assert version.source.endswith(f"/{tracking.ONNX_ARTIFACT}")
    assert version.tags[tracking.TAG_UID] == "uid-onnx-1"  # the registry tags stay
    local = mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(tmp_path / "dl"),
                                                tracking_uri=mlflow_server.url)
    flavour = mlflow.pyfunc.load_model(local)
    assert "onnx" in flavour.metadata.flavors
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    probs = flavour.predict({"images": images.numpy()})["probabilities"]
    want = export.probabilities(net.eval(), meta["preprocessing"], images.float() / 255.0, 1.5).numpy()
    assert np.abs(np.asarray(probs) - want).max() <= 1e-5
