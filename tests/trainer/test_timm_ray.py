"""timm backbones on real Ray (2 gloo workers, Ray Data actors, storage and weights on the moto S3 server): every
stage for one timm CNN (resnet18) and one timm ViT (vit_tiny_patch16_224 at 32 px), weights made here with
`pretrained=False`, saved as safetensors to S3 and loaded through `model.weights`. The FrozenFeatures output is the
reference model's pooled features on the same images: the loaded weights are the ones used."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from support.trainer_data import SMOKE_CHECKS, job_doc

from graft import storage
from graft.api.models import StageState, TransferJob
from graft_trainer import data as data_mod
from graft_trainer import models, timm_backbone
from graft_trainer.driver import Driver

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    """The drivers here join the session's Ray cluster (the `shared_ray` fixture) from this process: disconnect at
    the end (a joined cluster stays up)."""
    import ray

    yield
    ray.shutdown()


def _reference_features(ref: torch.nn.Module, driver: Driver, split: str) -> torch.Tensor:
    train, val = driver.target_data()
    source = train if split == "train" else val
    x = data_mod.normalize(source.images(32), driver.preprocessing["mean"], driver.preprocessing["std"])
    with torch.no_grad():
        return ref.eval().forward_head(ref.eval().forward_features(x), pre_logits=True)


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny_patch16_224"])
def test_every_stage_on_ray_with_safetensors_weights_from_s3(name, s3_endpoint, s3_bucket, ray_local, shared_ray):
    torch.manual_seed(1)
    ref = timm.create_model(name, pretrained=False, **({"img_size": 32} if name.startswith("vit") else {}))
    weights = f"{s3_bucket}/weights/{name}.safetensors"
    storage.write_bytes(weights, timm_backbone.safetensors_bytes(ref.state_dict()))
    base = {"model": {"backbone": f"timm:{name}", "numClasses": 10, "weights": weights},
            "data": {"train": "builtin:digits", "imageSize": 32, "shotsPerClass": 6, "validationSplit": 0.1},
            "workers": {"replicas": 2, "cpus": "1", "memory": "2Gi"},
            "storage": {"uri": f"{s3_bucket}/jobs", "endpoint": s3_endpoint}}
    base["checks"] = SMOKE_CHECKS

    # LP-FT from the weights on S3.
    spec = {**base, "stages": [{"type": "FrozenFeatures"}, {"type": "Head", "epochs": 20},
                               {"type": "FullFineTune", "epochs": 1, "batchSize": 16, "layerDecay": 0.7}]}
    job = TransferJob.model_validate(job_doc(f"lpft-{name.split('_')[0]}", spec))
    driver = Driver(job, log_to_driver=False)
    ledger = driver.run()
    assert [s.state for s in ledger.stages] == [StageState.SUCCEEDED] * 3, [s.message for s in ledger.stages]
    for split in ("train", "val"):
        stored = models.read_tensors(f"{driver.root}/features/{split}.pt")["features"]
        assert stored.shape[1] == ref.num_features
        assert torch.allclose(stored, _reference_features(ref, driver, split), atol=1e-5)
    fft = ledger.stage("FullFineTune")
    assert fft.checkpoint.startswith(f"{driver.root}/checkpoints/") and fft.metrics["val_accuracy"] >= 0
    meta = json.loads(storage.read_bytes(f"{ledger.model_uri}/model.json"))
    assert meta["timm"]["name"] == name and meta["labels"] == [str(i) for i in range(10)]

    # Pretrain starts from the same weights (2 workers, DDP) and hands its backbone to FrozenFeatures.
    spec = {**base, "stages": [{"type": "Pretrain", "data": "builtin:digits-clean", "numClasses": 10, "epochs": 1,
                                "batchSize": 64, "lr": 0.01}, {"type": "FrozenFeatures"}]}
    job = TransferJob.model_validate(job_doc(f"pretrain-{name.split('_')[0]}", spec))
    driver = Driver(job, log_to_driver=False)
    ledger = driver.run()
    assert [s.state for s in ledger.stages] == [StageState.SUCCEEDED] * 2, [s.message for s in ledger.stages]
    pretrained = models.read_state_dict(ledger.stage("Pretrain").output)
    after = timm.create_model(name, pretrained=False, num_classes=0, **({"img_size": 32} if name.startswith("vit")
                                                                         else {}))
    after.load_state_dict({k.removeprefix("backbone."): v for k, v in pretrained.items() if k.startswith("backbone.")})
    start = ref.state_dict()
    assert any(not torch.equal(v, start[k]) for k, v in after.state_dict().items()), "Pretrain changed nothing"
    stored = models.read_tensors(f"{driver.root}/features/train.pt")["features"]
    assert torch.allclose(stored, _reference_features(after, driver, "train"), atol=1e-5)
