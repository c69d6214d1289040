"""The exported model under `<storage>/<uid>/model/`: `model.pt` (a plain state_dict) and `model.json`
(architecture, label names, preprocessing, metrics). `load_model` and `predict` read it back."""

from __future__ import annotations

from typing import Any

import torch
from graft.trainer import models

from graft import storage

FORMAT_VERSION = 1


def export_model(root: str, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
    """Write the model folder; returns its URI. `meta` holds architecture, labels, preprocessing, metrics."""
    uri = storage.join(root, "model")
    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    models.save_tensors(storage.join(uri, "model.pt"), state)
    # model.json last: its presence means the folder is complete.
    storage.write_json(storage.join(uri, "model.json"), {"format_version": FORMAT_VERSION, **meta})
    return uri


def load_model(uri: str) -> tuple[models.GraftNet, dict[str, Any]]:
    """The exported network (eval mode) and its metadata."""
    try:
        meta = storage.read_json(storage.join(uri, "model.json"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: no model.json here (not an exported Graft model)") from None
    state = models.read_tensors(storage.join(uri, "model.pt"))
    net = models.build(meta["architecture"], meta["num_classes"], meta["preprocessing"]["image_size"])
    net.load_state_dict(state)
    net.eval()
    return net, meta


def predict(uri: str, images: list[str], top: int = 3) -> list[list[tuple[str, float]]]:
    """Top classes with probabilities for each image (local paths or `s3://` URIs)."""
    from graft.trainer.data import decode_image, normalize

    net, meta = load_model(uri)
    pre = meta["preprocessing"]
    x = torch.stack([torch.from_numpy(decode_image(img, pre["image_size"])) for img in images]).float() / 255.0
    with torch.inference_mode():
        probs = torch.softmax(net(normalize(x, pre["mean"], pre["std"])), dim=1)
    k = min(top, probs.shape[1])
    values, index = probs.topk(k, dim=1)
    labels = meta["labels"]
    return [
        [(labels[j], float(v)) for v, j in zip(vs.tolist(), ix.tolist(), strict=True)]
        for vs, ix in zip(values, index, strict=True)
    ]

