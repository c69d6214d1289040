"""Helpers for the trainer tests: image folders, weights files and jobs the tests make themselves."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch


def write_png(path: Path, value: int, size: int = 12) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(value)
    arr = np.clip(rng.normal(value, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path)


def write_manifest(tmp_path: Path, base: str, per_class: int) -> str:
    """A CSV manifest (columns `file`, `kind`) at `<base>/train.csv` listing `per_class` PNGs of each of cat, dog and
    owl, written beside it under `<base>/img/` through graft.storage (any scheme); returns the CSV's URI."""
    from graft import storage

    lines = ["file,kind"]
    for kind, value in (("cat", 40), ("dog", 130), ("owl", 220)):
        for i in range(per_class):
            write_png(tmp_path / "img.png", value + i)
            storage.write_bytes(f"{base}/img/{kind}-{i}.png", (tmp_path / "img.png").read_bytes())
            lines.append(f"img/{kind}-{i}.png,{kind}")
    storage.write_bytes(f"{base}/train.csv", ("\n".join(lines) + "\n").encode())
    return f"{base}/train.csv"


def state_dict_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def smallcnn_weights(path: Path, seed: int = 0) -> Path:
    """A SmallCNN backbone state_dict file (what a user's own pretraining would leave)."""
    from graft_trainer.models import SmallCNN

    torch.manual_seed(seed)
    path.write_bytes(state_dict_bytes(SmallCNN().state_dict()))
    return path


#: `spec.checks` of the tests' smoke-sized jobs (an epoch or two, a random or barely pretrained backbone, a couple of
#: labels per class): they learn next to nothing by design, so the learning check (graft_trainer/learning.py) warns
#: instead of failing them. tests/trainer/test_learning_check.py tests the check itself, at its default (Fail).
SMOKE_CHECKS = {"learning": {"action": "Warn"}}
#: `spec.serving` for a job whose test is not about serving: it ends at the PyTorch model (model.pt, model.json),
#: without the ONNX graph, Triton repository and InferenceService manifest. The exporter's first run in a process is
#: ~3 s on 2 cores (its imports), seconds every test that finishes a job would pay for files it never looks at; the
#: serving files have their own tests (test_serving_files.py, test_onnx_export.py, test_serve.py, the operator e2e).
NO_SERVING = {"export": False}


def job_doc(name: str, spec: dict, uid: str | None = None) -> dict:
    meta = {"name": name}
    if uid:
        meta["uid"] = uid
    return {"apiVersion": "graft.dev/v1alpha1", "kind": "TransferJob", "metadata": meta, "spec": spec}


def write_job(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


def export_constant_model(root: Path, labels: list[str], answer: str, image_size: int = 8) -> str:
    """Export a SmallCNN model (as a finished job would) that answers `answer` for every image; returns its URI."""
    from graft_trainer import export, models

    net = models.build("smallcnn", num_classes=len(labels), image_size=image_size)
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.zero_()
        net.head.bias[labels.index(answer)] = 4.0
    meta = {"architecture": "smallcnn", "num_classes": len(labels), "labels": labels,
            "preprocessing": {"image_size": image_size, "mean": [0.5] * 3, "std": [0.5] * 3}}
    return export.export_model(str(root), net.state_dict(), meta)
