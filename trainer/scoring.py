"""Scores of a stage's result on a labelled set: logits of a head on stored features or of a whole network on
images, and the metrics made from them (accuracy, loss). The driver scores the held-out test set with these
after each stage; nothing here chooses anything."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from graft.trainer import data as data_mod
from graft.trainer import models

from graft import storage

#: Images run through a network at a time when scoring.
BATCH = 256


def stored_features(features_uri: str, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(features, labels) of one stored set (`train`, `val`, `test`) of a FrozenFeatures output, or None."""
    try:
        tensors = models.read_tensors(storage.join(features_uri, f"{name}.pt"))
    except FileNotFoundError:
        return None
    return tensors["features"], tensors["labels"]


def head_logits(head_state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits of a stored `nn.Linear` head (its state_dict) on features."""
    with torch.no_grad():
        return F.linear(x, head_state["weight"], head_state["bias"])


def network_logits(net: models.GraftNet, source: data_mod.Source, size: int, preset: dict) -> torch.Tensor:
    """Logits of a whole network on every image of `source`, in order (eval mode, on the CPU)."""
    net.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(source), BATCH):
            part = source.subset(torch.arange(start, min(start + BATCH, len(source))).numpy())
            x = data_mod.normalize(part.images(size), preset["mean"], preset["std"])
            out.append(net(x).float())
    return torch.cat(out) if out else torch.zeros((0, net.head.out_features))


def metrics(logits: torch.Tensor, labels: torch.Tensor, prefix: str) -> dict[str, float]:
    """`<prefix>_accuracy` and `<prefix>_loss` (mean cross-entropy) of logits against labels."""
    if len(labels) == 0:
        return {}
    labels = torch.as_tensor(labels)
    return {
        f"{prefix}_accuracy": (logits.argmax(1) == labels).float().mean().item(),
        f"{prefix}_loss": F.cross_entropy(logits, labels).item(),
    }
