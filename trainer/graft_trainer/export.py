"""The exported model under `<storage>/<uid>/model/`: `model.pt` (a plain state_dict) and `model.json`
(architecture, label names, preprocessing, metrics). `load_model` and `predict` read it back."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from graft import storage
from graft_trainer import models

FORMAT_VERSION = 1


def export_model(root: str, state_dict: dict[str, torch.Tensor], meta: dict[str, Any],
                 extra: dict[str, bytes] | None = None) -> str:
    """Write the model folder; returns its URI. `meta` holds architecture, labels, preprocessing, metrics; `extra`
    other files of the folder by name (a timm model's `timm.safetensors`)."""
    uri = storage.join(root, "model")
    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    models.save_tensors(storage.join(uri, "model.pt"), state)
    for name, data in (extra or {}).items():
        storage.write_bytes(storage.join(uri, name), data)
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


def probabilities(net: models.GraftNet, preprocessing: dict[str, Any], x: torch.Tensor, temperature: float = 1.0
                  ) -> torch.Tensor:
    """The class probabilities `[N, classes]` of a batch of float images in [0, 1], resized to the model's size,
    the logits divided by the model's `temperature` (fitted on validation: calibrated confidence, same ranking)."""
    from graft_trainer.data import normalize

    with torch.inference_mode():
        return torch.softmax(net(normalize(x, preprocessing["mean"], preprocessing["std"])) / temperature, dim=1)


@dataclass
class Prediction:
    """One image's result: the top classes with probabilities, or why it could not be read."""

    image: str
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"image": self.image, "error": self.error}
        return {"image": self.image, "top": [{"label": label, "probability": p} for label, p in self.top]}


#: How many images `predict` decodes and runs at a time (memory stays bounded for a folder of any size).
PREDICT_BATCH = 64


def _decode_all(uris: list[str], pre: dict[str, Any], pool: ThreadPoolExecutor
                ) -> list[tuple[np.ndarray | None, str | None]]:
    from graft_trainer.data import resize_of, try_decode

    def one(uri: str) -> tuple[np.ndarray | None, str | None]:
        try:
            return try_decode(uri, pre["image_size"], resize_of(pre))
        except storage.StorageError as exc:  # a wrong bucket or key for this one file: say so, go on
            return None, exc.cause

    return list(pool.map(one, uris))


def predict(uri: str, images: list[str], top: int = 3, batch: int | None = None) -> Iterator[Prediction]:
    """Top classes with probabilities for each image (local paths or `s3://` URIs), in the order given; a folder
    stands for every image file under it (`data.list_images`). A file that cannot be read gives a Prediction
    with its `error` and the others go on. Images are decoded and run `batch` (PREDICT_BATCH) at a time, as the
    caller reads. The model is loaded before the first result (FileNotFoundError or StorageError if it cannot be)."""
    from graft_trainer.data import list_images

    net, meta = load_model(uri)
    pre, labels = meta["preprocessing"], meta["labels"]
    k = min(top, len(labels))

    def files() -> Iterator[str | Prediction]:
        for image in images:
            try:
                found = list_images(image)
            except storage.StorageError as exc:
                yield Prediction(image, error=exc.cause)
                continue
            yield from found or [Prediction(image, error="a folder with no image files under it")]

    def run(chunk: list[str | Prediction], pool: ThreadPoolExecutor) -> Iterator[Prediction]:
        named = [c for c in chunk if isinstance(c, str)]
        decoded = dict(zip(named, _decode_all(named, pre, pool), strict=True))
        good = [name for name in named if decoded[name][0] is not None]
        ranked: dict[str, list[tuple[str, float]]] = {}
        if good:
            x = torch.from_numpy(np.stack([decoded[name][0] for name in good])).float() / 255.0
            values, index = probabilities(net, pre, x, meta.get("temperature", 1.0)).topk(k, dim=1)
            for name, vs, ix in zip(good, values.tolist(), index.tolist(), strict=True):
                ranked[name] = [(labels[j], float(v)) for v, j in zip(vs, ix, strict=True)]
        for c in chunk:
            if isinstance(c, Prediction):
                yield c
            elif c in ranked:
                yield Prediction(c, ranked[c])
            else:
                yield Prediction(c, error=decoded[c][1])

    def generate() -> Iterator[Prediction]:
        chunk: list[str | Prediction] = []
        with ThreadPoolExecutor(max_workers=8) as pool:
            for item in files():
                chunk.append(item)
                if len(chunk) == (batch or PREDICT_BATCH):
                    yield from run(chunk, pool)
                    chunk = []
            yield from run(chunk, pool)

    return generate()
