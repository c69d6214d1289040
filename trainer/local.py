"""The stages' own loops run in this process, without Ray: for statistical tests and benchmark baselines.

Same code as the Ray run (`loops.train_network`, `loops.train_head`, `loops.extract_features`) with a
`LocalSession` in place of a Ray Train worker; outputs go to a local folder in the driver's layout.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from graft.trainer import data as data_mod
from graft.trainer import loops, models
from graft.trainer.session import LocalSession

from graft import storage
from graft.api.models import TransferJobSpec


def _save(uri: str, tensors: dict[str, torch.Tensor]) -> None:
    buf = io.BytesIO()
    torch.save(tensors, buf)
    storage.write_bytes(uri, buf.getvalue())


def run_stages(spec: TransferJobSpec, workdir: str | Path, init_backbone: str | None = None) -> dict[str, Any]:
    """Run every stage of `spec` in order in-process; returns `{stage: last-epoch metrics}`.

    `init_backbone` overrides where FrozenFeatures/FullFineTune take their backbone from (a Pretrain output
    file, for reuse across runs); otherwise Pretrain's output or `spec.model.weights`."""
    root = str(Path(workdir).resolve())
    preset = models.torchvision_preset(spec.model.backbone, spec.model.weights)
    base = {"spec": spec.model_dump(mode="json", by_alias=True), "preprocessing": preset, "root": None}
    backbone = init_backbone or spec.model.weights
    head_uri = None
    features_uri = storage.join(root, "features")
    results: dict[str, Any] = {}
    for index, stage in enumerate(spec.stages):
        cfg = {**base, "stage": stage.type, "index": index}
        session = LocalSession()
        if stage.type == "FrozenFeatures":
            cfg["init_backbone"] = backbone
            d = spec.data
            train, val = data_mod.train_val(d.train, d.validation, d.validation_split, d.seed, d.shots_per_class)
            net = loops.feature_model(cfg)
            for name, src in (("train", train), ("val", val)):
                feats = loops.extract_features(net.backbone, src.images(d.image_size), preset, torch.device("cpu"))
                labels = torch.from_numpy(src.labels)
                _save(storage.join(features_uri, f"{name}.pt"), {"features": feats, "labels": labels})
            results[stage.type] = {"train_images": len(train), "val_images": len(val)}
            continue
        if stage.type == "Head":
            cfg["features"] = features_uri
            loops.train_head(session, cfg)
            head = session.state["head"]
            head_uri = storage.join(root, "outputs", "head.pt")
            _save(head_uri, {"head.weight": head["weight"], "head.bias": head["bias"]})
        else:
            if stage.type == "FullFineTune":
                cfg["init_backbone"] = backbone
                cfg["init_head"] = head_uri
            loops.train_network(session, cfg)
            out = storage.join(root, "outputs", f"{stage.type.lower()}.pt")
            _save(out, session.state["model"])
            if stage.type == "Pretrain":
                backbone = out
        results[stage.type] = session.reports[-1]
    return results
