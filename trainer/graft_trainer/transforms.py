"""How an image becomes a network's input: the resize (plain bilinear, or a timm model's eval resize and centre crop),
normalisation by the weights' preset, and train-time augmentation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Resize:
    """A timm model's eval resize (its pretrained config's): the shorter side to `floor(size / crop_pct)` with
    `interpolation`, then the centre `size` x `size` crop (timm's `transforms_imagenet_eval`, crop_mode center)."""

    interpolation: str = "bicubic"
    crop_pct: float = 1.0


def resize_of(preprocessing: dict) -> Resize | None:
    """The resize a preprocessing dict (`StageConfig.preprocessing`, model.json's) asks for; None: the plain one
    (bilinear to size x size, as for torchvision backbones)."""
    if "crop_pct" not in preprocessing:
        return None
    return Resize(str(preprocessing.get("interpolation", "bicubic")), float(preprocessing["crop_pct"]))


#: Pillow's resampling filters by the names timm's configs use.
_PIL_FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def timm_resize(img, size: int, resize: Resize):

    scale = math.floor(size / resize.crop_pct)
    w, h = img.size
    # timm's Resize(int): the shorter side to `scale`, the other by the same ratio (torchvision's rule).
    new = (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)
    img = img.resize(new, _PIL_FILTERS.get(resize.interpolation, 3))
    left, top = round((new[0] - size) / 2.0), round((new[1] - size) / 2.0)
    return img.crop((left, top, left + size, top + size))


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def augment(x: torch.Tensor, hflip: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Train-time augmentation on a batch: random translation (pad + crop) and, where it suits, flips."""
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    # Per-sample crops via gather-free indexing: build index grids once per batch.
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).to(x.device)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).to(x.device)
    out = padded[torch.arange(n, device=x.device).view(n, 1, 1, 1), torch.arange(x.shape[1], device=x.device).view(
        1, -1, 1, 1
    ), rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
    if hflip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(x.device).view(n, 1, 1, 1)
        out = torch.where(flip, out.flip(-1), out)
    return out
