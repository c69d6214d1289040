"""The Head stage trains on stored features only: the backbone is never built, loaded or run."""

from __future__ import annotations

import io

import pytest
import torch
import torchvision

from graft import storage
from graft.api.models import TransferJobSpec
from graft_trainer import models, sweep
from graft_trainer.session import LocalSession
from graft_trainer.stages import StageConfig


def _forbidden(*_a, **_k):
    raise AssertionError("the backbone was touched in the Head stage")


def test_head_never_builds_loads_or_runs_a_backbone(tmp_path, monkeypatch):
    # Features of two well-separated classes, stored as FrozenFeatures writes them.
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(2, 64, generator=g) * 3
    y = torch.arange(40) % 2
    x = centers[y] + torch.randn(40, 64, generator=g)
    for name in ("train", "val"):
        buf = io.BytesIO()
        torch.save({"features": x, "labels": y}, buf)
        storage.write_bytes(storage.join(str(tmp_path), f"{name}.pt"), buf.getvalue())

    for target, attr in (
        (models, "build"),
        (models, "load_weights"),
        (models.GraftNet, "forward"),
        (models.SmallCNN, "forward"),
        (torchvision.models, "get_model"),
        (torchvision.models.ResNet, "forward"),
    ):
        monkeypatch.setattr(target, attr, _forbidden)

    spec = TransferJobSpec.model_validate(
        {
            "model": {"backbone": "resnet50", "numClasses": 2, "weights": "s3://nowhere/never-read.pt"},
            "data": {"train": "builtin:digits"},
            "stages": [{"type": "FrozenFeatures"}, {"type": "Head", "epochs": 20, "lr": 0.05}],
        }
    )
    session = LocalSession()
    sweep.train_head(session, StageConfig(spec, 1, features=str(tmp_path)))
    assert session.reports[-1]["val_accuracy"] == pytest.approx(1.0)
    assert set(session.state["head"]) == {"weight", "bias"}
    assert session.state["head"]["weight"].shape == (2, 64)


@pytest.mark.parametrize("prefix", ["", "head."], ids=["stored-as-is", "stored-by-older-runs"])
def test_a_head_output_loads_into_the_network_that_fine_tunes_it(tmp_path, prefix):
    """The Head stage stores its nn.Linear state_dict as it is; a job resumed after an upgrade still finds the
    head an older run stored under GraftNet's names."""
    head = torch.nn.Linear(64, 3)
    uri = str(tmp_path / "head.pt")
    models.save_tensors(uri, {prefix + k: v for k, v in head.state_dict().items()})
    net = models.build("smallcnn", 3, 8)
    models.load_head(net, uri)
    assert torch.equal(net.state_dict()["head.weight"], head.weight.detach())
