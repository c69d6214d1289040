"""timm backbones (`spec.model.backbone: timm:<name>`): the model with no classifier (`num_classes=0`), its pooled
features through timm's own API (`forward_features`, then `forward_head(pre_logits=True)`), its preprocessing from
its pretrained config (`timm.data.resolve_data_config`: mean, std, interpolation, crop_pct; `transforms.Resize`
applies the last two), weights files in timm's key layout, hub downloads, and the fine-tuning parameter groups
(layer-wise learning-rate decay, no weight decay on norms and biases).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from graft.api.models import TIMM_PREFIX
from graft_trainer.errors import InputError, check_fit

#: Layer-wise learning-rate decay when `layerDecay` is empty, by family (the first prefix that matches the model
#: name). Transformers: 0.75, the BEiT/MAE fine-tuning value for base models; ConvNeXt: 0.8, the ConvNeXt
#: authors' fine-tuning value; everything else (ResNets, EfficientNets, ...) 1.0, off.
LAYER_DECAY_DEFAULTS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("vit", "deit", "beit", "eva", "swin", "cait", "xcit", "flexivit", "samvit"), 0.75),
    (("convnext",), 0.8),
)


def is_timm(arch: str) -> bool:
    return arch.startswith(TIMM_PREFIX)


def model_name(arch: str) -> str:
    """timm's name of a `timm:<name>` backbone."""
    return arch[len(TIMM_PREFIX) :]


def create(arch: str, image_size: int, num_classes: int = 0, pretrained: bool = False,
           cache_dir: str | None = None) -> nn.Module:
    """The timm model (random weights unless `pretrained`), for `image_size` inputs where the model takes a size
    (ViTs: `img_size`, so the position embeddings fit)."""
    import timm

    name = model_name(arch)
    kwargs: dict[str, Any] = {"num_classes": num_classes, "pretrained": pretrained}
    if cache_dir:
        kwargs["cache_dir"] = cache_dir
    try:
        try:
            model = timm.create_model(name, img_size=image_size, **kwargs)
            model.graft_create_kwargs = {"img_size": image_size}  # what a plain timm load must pass too
        except TypeError as exc:  # a model without an input size (CNNs)
            if "img_size" not in str(exc):
                raise
            model = timm.create_model(name, **kwargs)
            model.graft_create_kwargs = {}
        return model
    except (RuntimeError, OSError, ValueError) as exc:
        if name.startswith("hf-hub:") or pretrained:
            raise InputError(f"{TIMM_PREFIX}{name}", "cannot fetch it from the Hugging Face Hub "
                             f"({type(exc).__name__}: {str(exc)[:300]}); no network? a private repository needs "
                             "HF_TOKEN in the credentials Secret") from None
        raise InputError("spec.model.backbone", f"timm cannot build {name!r} ({type(exc).__name__}: {exc})") from None


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled features of a batch: timm's `forward_features`, then `forward_head(pre_logits=True)`."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def data_config(arch: str, model: nn.Module | None = None) -> dict[str, Any]:
    """The model's preprocessing from its pretrained config (`timm.data.resolve_data_config`): mean, std,
    interpolation, crop_pct, crop_mode, input_size."""
    import timm
    from timm.data import resolve_data_config

    if model is None:
        cfg = timm.models.get_pretrained_cfg(model_name(arch))
        if cfg is None:  # hf-hub models: the config is the repository's
            model = create(arch, 224)
        else:
            return dict(resolve_data_config(pretrained_cfg=cfg.to_dict()))
    return dict(resolve_data_config(model=model))


def preprocessing(arch: str) -> dict[str, Any]:
    """What the trainer applies, from the pretrained config: mean and std, and timm's eval resize (the shorter side
    to imageSize / crop_pct with the config's interpolation, then the centre crop; `transforms.Resize`)."""
    cfg = data_config(arch)
    return {"mean": [float(v) for v in cfg["mean"]], "std": [float(v) for v in cfg["std"]],
            "interpolation": str(cfg.get("interpolation") or "bicubic"), "crop_pct": float(cfg.get("crop_pct") or 1.0)}


def json_config(arch: str, image_size: int) -> dict[str, Any]:
    """model.json's `timm` block: the timm name and its data config, as plain JSON."""
    cfg = data_config(arch)
    plain = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
    return {"name": model_name(arch), "data_config": plain, "image_size": image_size}


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Key prefixes of the model's classifier (its pretrained config's `classifier`, e.g. `head`, `fc`, `head.fc`)."""
    found = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    return (found,) if isinstance(found, str) else tuple(found)


def _filter(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model family's own checkpoint filter, as timm applies it to pretrained weights: resamples position
    embeddings to this image size, converts original (non-timm) layouts. As it is when the family has none."""
    fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if fn is None:
        return state
    try:
        return fn(dict(state), model)
    except Exception:  # a filter that does not know this layout: the key check below names the difference
        return state


def fit_state(arch: str, model: nn.Module, state: Mapping[str, torch.Tensor], uri: str
              ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """`state` (timm's key layout, with or without its classifier) as the classifier-less `model` loads it, and the
    classifier keys left out. Any other missing or unexpected key, or a wrong shape, is an InputError naming
    them."""
    state = _filter(model, dict(state))
    own = model.state_dict()
    prefixes = tuple(p + "." for p in classifier_prefixes(model))
    dropped = sorted(k for k in state if k not in own and k.startswith(prefixes))
    sd = {k: v for k, v in state.items() if k not in dropped}
    check_fit(uri, arch, own, sd)
    return sd, dropped


def timm_state_dict(backbone: nn.Module, head: nn.Linear) -> dict[str, torch.Tensor]:
    """A GraftNet's weights in plain timm's layout: the backbone's keys and the head as the model's classifier, so
    `timm.create_model(name, num_classes=N, checkpoint_path=...)` loads it (strict)."""
    prefixes = classifier_prefixes(backbone)
    if len(prefixes) != 1:
        raise ValueError(f"the model has {len(prefixes)} classifiers; no plain timm layout")
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    state[f"{prefixes[0]}.weight"] = head.weight.detach().cpu().contiguous()
    state[f"{prefixes[0]}.bias"] = head.bias.detach().cpu().contiguous()
    return state


def hub_state_dict(arch: str, image_size: int) -> dict[str, torch.Tensor]:
    """The model's pretrained backbone weights from the Hugging Face Hub (timm's download; `HF_TOKEN` from the
    environment for a private repository). Downloaded into a scratch folder: the caller keeps them in the job's
    storage."""
    with tempfile.TemporaryDirectory(prefix="graft-hub-") as cache:
        model = create(arch, image_size, pretrained=True, cache_dir=cache)
        return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def default_layer_decay(arch: str) -> float:
    """The family's layer-wise learning-rate decay (LAYER_DECAY_DEFAULTS)."""
    name = model_name(arch).removeprefix("hf-hub:").split("/")[-1].lower()
    for prefixes, decay in LAYER_DECAY_DEFAULTS:
        if name.startswith(prefixes):
            return decay
    return 1.0


def param_groups(backbone: nn.Module, lr: float, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """The backbone's AdamW parameter groups: timm's `param_groups_layer_decay` (layer i of L at
    `lr * layer_decay^(L - i)`; no weight decay on 1-D parameters, i.e. norms and biases, nor on what the model's
    `no_weight_decay()` names), each group's `lr` set from its `lr_scale`."""
    from timm.optim import param_groups_layer_decay

    skip = backbone.no_weight_decay() if hasattr(backbone, "no_weight_decay") else ()
    groups = param_groups_layer_decay(backbone, weight_decay=weight_decay, no_weight_decay_list=skip,
                                      layer_decay=layer_decay)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    return groups


def safetensors_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in state.items()})


def read_safetensors(data: bytes, uri: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    try:
        return load(data)
    except Exception as exc:
        raise InputError(uri, f"not a safetensors file ({type(exc).__name__}: {exc})") from None

