"""Networks: torchvision backbones by name (and a small CNN for tiny images), or any timm model (`timm:<name>`,
`timm_backbone.py`), split into a feature extractor (`backbone`, pooled features) and a linear classifier (`head`),
plus weights from a URI.

`GraftNet.state_dict()` keys are `backbone.*` (the torchvision or timm model's own keys, minus its classifier)
and `head.weight` / `head.bias`.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping

import torch
from torch import nn

from graft import storage
from graft.api.models import BACKBONES
from graft_trainer import timm_backbone
from graft_trainer.errors import InputError, check_fit
from graft_trainer.transforms import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

#: Per family: the classifier attribute and what replaces it so that the model returns pooled features.
#: mobilenet_v3's classifier starts with a 960->1280 layer: features are the 960 pooled ones, the
#: whole classifier is replaced. convnext keeps its LayerNorm + Flatten (the head's input normalisation).
_CLASSIFIER = {
    "resnet18": "fc",
    "resnet50": "fc",
    "mobilenet_v3_large": "classifier",
    "efficientnet_b0": "classifier",
    "convnext_tiny": "classifier",
    "vit_b_16": "heads",
}


class SmallCNN(nn.Module):
    """Three conv blocks and global average pooling: 64 features, for tiny images such as 8x8 digits."""

    def __init__(self):
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        # One flat Sequential: the state_dict keys (`features.0.weight`, ...) are those of stored weights.
        pool = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*block(3, 32), *block(32, 64), nn.MaxPool2d(2), *block(64, 64), *pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class GraftNet(nn.Module):
    """A backbone returning pooled features and a linear head on top."""

    def __init__(self, arch: str, backbone: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.arch = arch
        self.feature_dim = feature_dim
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)

    @property
    def is_timm(self) -> bool:
        return timm_backbone.is_timm(self.arch)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (timm: `forward_features`, then `forward_head(pre_logits=True)`)."""
        return timm_backbone.features(self.backbone, x) if self.is_timm else self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _torchvision_model(arch: str, image_size: int, num_classes: int = 1000) -> nn.Module:
    import torchvision

    kwargs = {"num_classes": num_classes}
    if arch == "vit_b_16":
        kwargs["image_size"] = image_size
    return torchvision.models.get_model(arch, weights=None, **kwargs)


def _strip_classifier(arch: str, model: nn.Module) -> nn.Module:
    attr = _CLASSIFIER[arch]
    if arch == "convnext_tiny":
        model.classifier = nn.Sequential(model.classifier[0], model.classifier[1])
    else:
        setattr(model, attr, nn.Identity())
    return model


def build(arch: str, num_classes: int, image_size: int = 224) -> GraftNet:
    """A randomly initialised GraftNet of the named architecture with `num_classes` outputs."""
    if timm_backbone.is_timm(arch):
        backbone = timm_backbone.create(arch, image_size)
        return GraftNet(arch, backbone, backbone.num_features, num_classes)
    if arch not in BACKBONES:
        raise InputError("spec.model.backbone", f"unknown backbone {arch!r}; known: {', '.join(BACKBONES)}")
    if arch == "smallcnn":
        backbone: nn.Module = SmallCNN()
    else:
        if arch == "vit_b_16" and image_size % 16:
            raise InputError("spec.data.imageSize", f"vit_b_16 needs an image size divisible by 16, got {image_size}")
        backbone = _strip_classifier(arch, _torchvision_model(arch, image_size))
    return GraftNet(arch, backbone, BACKBONES[arch], num_classes)


def _classifier_keys(arch: str, keys) -> set[str]:
    """Keys of the torchvision classifier that the head replaces (convnext keeps its norm, classifier.0)."""
    if arch == "smallcnn":
        return set()
    attr = _CLASSIFIER[arch]
    drop = {k for k in keys if k.startswith(attr + ".")}
    if arch == "convnext_tiny":
        drop = {k for k in drop if not k.startswith("classifier.0.")}
    return drop


def read_state_dict(uri: str) -> dict[str, torch.Tensor]:
    """A state_dict from `torchvision:<WEIGHTS>`, `s3://` or a local file; InputError names the URI and cause."""
    if uri.startswith("torchvision:"):
        raise ValueError("torchvision: weights need the architecture; use load_weights")
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise InputError(uri, "weights file not found") from None
    if uri.endswith(".safetensors"):
        return timm_backbone.read_safetensors(data, uri)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(uri, f"not a PyTorch state_dict file ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, Mapping):  # timm training checkpoints keep the weights under one of these
        obj = next((obj[k] for k in ("state_dict_ema", "model_ema", "state_dict") if isinstance(obj.get(k), Mapping)),
                   obj)
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]  # a Graft or training checkpoint
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(uri, "not a state_dict (expected a mapping of parameter names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def save_tensors(uri: str, tensors: dict[str, torch.Tensor]) -> None:
    """Write a dict of tensors (a state_dict, stored features) with `torch.save` to a local path or `s3://`."""
    buf = io.BytesIO()
    torch.save(tensors, buf)
    storage.write_bytes(uri, buf.getvalue())


def read_tensors(uri: str) -> dict[str, torch.Tensor]:
    """What `save_tensors` wrote, on the CPU."""
    return torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True)


def load_head(net: GraftNet, uri: str) -> None:
    """Load the Head stage's output (its `nn.Linear` state_dict, stored as it is) into `net.head`. Runs before
    2026-12 stored it under GraftNet's key names (`head.weight`): those outputs load too."""
    net.head.load_state_dict({k.removeprefix("head."): v for k, v in read_state_dict(uri).items()})


def _torchvision_weights(arch: str, uri: str):
    """The torchvision weights a `torchvision:<NAME>` URI names; InputError lists the known ones."""
    import torchvision

    enum = torchvision.models.get_model_weights(arch)
    name = uri[len("torchvision:") :]
    try:
        return enum.DEFAULT if name == "DEFAULT" else enum[name]
    except KeyError:
        known = ", ".join(w.name for w in enum)
        raise InputError(uri, f"no such torchvision weights for {arch}; known: {known}") from None


def _torchvision_state_dict(arch: str, uri: str) -> dict[str, torch.Tensor]:
    if arch == "smallcnn":
        raise InputError(uri, "smallcnn has no torchvision weights; use a file or s3:// URI")
    weights = _torchvision_weights(arch, uri)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:
        raise InputError(uri, f"cannot download {weights.url} ({type(exc).__name__}: {exc}); no network?") from None


def default_image_size(arch: str) -> int:
    """`data.imageSize` when the spec leaves it empty: a timm model's pretrained input size, else 224."""
    if timm_backbone.is_timm(arch):
        return int(timm_backbone.data_config(arch)["input_size"][-1])
    return 224


def torchvision_preset(arch: str, uri: str | None) -> dict:
    """Normalisation of the weights' preset (ImageNet statistics for torchvision backbones); a timm backbone's
    comes from its pretrained config, with its resize (interpolation, crop_pct)."""
    if timm_backbone.is_timm(arch):
        return timm_backbone.preprocessing(arch)
    if arch == "smallcnn":
        return {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    if uri and uri.startswith("torchvision:"):
        try:
            tf = _torchvision_weights(arch, uri).transforms()
            return {"mean": list(tf.mean), "std": list(tf.std)}
        except (InputError, AttributeError):
            pass
    return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def load_backbone_state(net: GraftNet, state: Mapping[str, torch.Tensor], uri: str) -> list[str]:
    """Load backbone weights given as a GraftNet or plain torchvision/timm state_dict; the head stays as it is.
    Returns the classifier keys left out (a timm checkpoint's own classifier, which the head replaces)."""
    dropped: list[str] = []
    if any(k.startswith("backbone.") for k in state):
        sd = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    elif net.is_timm:
        sd, dropped = timm_backbone.fit_state(net.arch, net.backbone, state, uri)
    else:
        drop = _classifier_keys(net.arch, state.keys())
        sd = {k: v for k, v in state.items() if k not in drop}
        if net.arch == "smallcnn":
            sd = {k: v for k, v in sd.items() if k.startswith("features.")}
    check_fit(uri, net.arch, net.backbone.state_dict(), sd)
    net.backbone.load_state_dict(sd, strict=True)
    return dropped


def load_weights(net: GraftNet, uri: str, report: bool = False) -> None:
    """Initialise the backbone from a weights URI (`torchvision:NAME`, `s3://...`, local file: a state_dict or
    `.safetensors`). `report`: log the classifier keys left out (the driver's check says it once; workers do not
    repeat it)."""
    state = _torchvision_state_dict(net.arch, uri) if uri.startswith("torchvision:") else read_state_dict(uri)
    dropped = load_backbone_state(net, state, uri)
    if report and dropped:
        log.warning("%s: the checkpoint's classifier (%s) is not loaded: the new head with %d outputs replaces it",
                    uri, ", ".join(dropped), net.head.out_features)
