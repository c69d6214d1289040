"""A manifest job on real Ray (2 gloo workers, Ray Data actors): the CSV and the images it lists on the moto S3
server, read by the driver, the feature actors and the training workers alike, the training set streamed from S3
batch by batch (it does not fit the workers' memory budget)."""

from __future__ import annotations

import json

import pytest
from support.trainer_data import NO_SERVING, SMOKE_CHECKS, job_doc, smallcnn_weights, write_manifest

from graft import storage
from graft.api.models import StageState, TransferJob
from graft_trainer.driver import Driver

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    """The drivers here join the session's Ray cluster (the `shared_ray` fixture) from this process: disconnect at
    the end (a joined cluster stays up)."""
    import ray

    yield
    ray.shutdown()


def test_csv_and_images_on_s3_on_ray(tmp_path, s3_endpoint, s3_bucket, ray_local, shared_ray):
    write_manifest(tmp_path, f"{s3_bucket}/birds", 8)
    weights = f"{s3_bucket}/w/smallcnn.pt"
    storage.write_bytes(weights, smallcnn_weights(tmp_path / "w.pt").read_bytes())
    spec = {"model": {"backbone": "smallcnn", "numClasses": 3, "weights": weights},
            "data": {"train": f"{s3_bucket}/birds/train.csv", "pathColumn": "file", "labelColumn": "kind",
                     "imageSize": 16, "validationSplit": 0.25},
            "stages": [{"type": "FrozenFeatures"}, {"type": "Head", "epochs": 10},
                       {"type": "FullFineTune", "epochs": 2, "batchSize": 8}],
            "workers": {"replicas": 2, "cpus": "1", "memory": "4Ki"},  # 4 KiB: the images are streamed
            "checks": SMOKE_CHECKS,
            "serving": NO_SERVING,
            "storage": {"uri": f"{s3_bucket}/jobs", "endpoint": s3_endpoint}}
    ledger = Driver(TransferJob.model_validate(job_doc("birds", spec)), log_to_driver=False).run()
    assert [s.state for s in ledger.stages] == [StageState.SUCCEEDED] * 3, [s.message for s in ledger.stages]
    assert ledger.stage("FrozenFeatures").metrics["train_images"] == 18
    meta = json.loads(storage.read_bytes(f"{ledger.model_uri}/model.json"))
    assert meta["labels"] == ["cat", "dog", "owl"]
