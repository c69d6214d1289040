"""Backbones by name, pooled features per family, weights from files and s3://, and clear errors."""

from __future__ import annotations

import pytest
import torch
import torchvision
from support.trainer_data import state_dict_bytes

from graft import storage
from graft.api.models import BACKBONES
from graft_trainer import models
from graft_trainer.errors import InputError

SIZES = {"vit_b_16": 224, "smallcnn": 8}


@pytest.mark.parametrize("arch", list(BACKBONES), ids=list(BACKBONES))
def test_each_backbone_gives_pooled_features_of_its_width_and_a_new_head(arch):
    size = SIZES.get(arch, 64)
    net = models.build(arch, num_classes=7, image_size=size).eval()
    with torch.no_grad():
        feats = net.backbone(torch.randn(2, 3, size, size))
        logits = net(torch.randn(2, 3, size, size))
    assert feats.shape == (2, BACKBONES[arch])
    assert logits.shape == (2, 7)


def test_torchvision_state_dict_file_loads_into_the_backbone_without_its_classifier(tmp_path):
    reference = torchvision.models.resnet18(num_classes=1000)
    path = tmp_path / "resnet18.pt"
    path.write_bytes(state_dict_bytes(reference.state_dict()))
    net = models.build("resnet18", num_classes=3, image_size=32)
    models.load_weights(net, str(path))
    assert torch.equal(net.backbone.conv1.weight, reference.conv1.weight)
    assert net.head.out_features == 3


def test_convnext_keeps_its_classifier_norm_from_the_weights(tmp_path):
    reference = torchvision.models.convnext_tiny(num_classes=1000)
    with torch.no_grad():
        reference.classifier[0].weight.fill_(0.5)
    path = tmp_path / "convnext.pt"
    path.write_bytes(state_dict_bytes(reference.state_dict()))
    net = models.build("convnext_tiny", num_classes=4, image_size=32)
    models.load_weights(net, str(path))
    assert torch.all(net.backbone.classifier[0].weight == 0.5)


def test_weights_from_s3(s3_bucket):
    reference = torchvision.models.mobilenet_v3_large(num_classes=1000)
    uri = f"{s3_bucket}/weights/mnv3.pt"
    storage.write_bytes(uri, state_dict_bytes(reference.state_dict()))
    net = models.build("mobilenet_v3_large", num_classes=5, image_size=32)
    models.load_weights(net, uri)
    assert torch.equal(net.backbone.features[0][0].weight, reference.features[0][0].weight)


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        (None, "weights file not found"),
        (b"definitely not a checkpoint", "not a PyTorch state_dict file"),
        ("wrong-arch", "weights do not fit backbone resnet18"),
    ],
    ids=["missing", "garbage", "wrong-architecture"],
)
def test_bad_weights_name_the_uri_and_the_cause(tmp_path, content, cause):
    path = tmp_path / "w.pt"
    if content == "wrong-arch":
        path.write_bytes(state_dict_bytes(torchvision.models.mobilenet_v3_large().state_dict()))
    elif content is not None:
        path.write_bytes(content)
    net = models.build("resnet18", num_classes=3, image_size=32)
    with pytest.raises(InputError) as err:
        models.load_weights(net, str(path))
    assert err.value.uri == str(path)
    assert cause in str(err.value)


def test_unknown_torchvision_weights_name_lists_the_known_ones():
    net = models.build("resnet18", num_classes=3, image_size=32)
    with pytest.raises(InputError, match=r"torchvision:NOPE: no such torchvision weights .*IMAGENET1K_V1"):
        models.load_weights(net, "torchvision:NOPE")


def test_preset_of_torchvision_weights_is_their_normalisation():
    preset = models.torchvision_preset("resnet50", "torchvision:IMAGENET1K_V2")
    assert preset["mean"] == pytest.approx([0.485, 0.456, 0.406])
