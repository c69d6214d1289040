"""Scores of a stage's result on a labelled set: logits of a head on stored features or of a whole network on
images, and the metrics made from them (accuracy, loss). The driver scores the held-out test set with these
after each stage; nothing here chooses anything."""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F

from graft import storage
from graft_trainer import data as data_mod
from graft_trainer import models

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
            x = data_mod.normalize(part.images(size, resize=data_mod.resize_of(preset)), preset["mean"], preset["std"])
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


# --------------------------------------------------------------------------------------------- calibration

#: Bins of the expected calibration error (Guo et al. 2017 use 15).
ECE_BINS = 15


def ece(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, bins: int = ECE_BINS) -> float:
    """Expected calibration error: the mean |accuracy - confidence| over equal-width confidence bins, weighted by
    the share of samples in each."""
    labels = torch.as_tensor(labels)
    confidence, predicted = torch.softmax(logits / temperature, dim=1).max(dim=1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    total = torch.zeros(())
    for lo, hi in itertools.pairwise(edges.tolist()):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            total += inside.float().mean() * (correct[inside].mean() - confidence[inside].mean()).abs()
    return total.item()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The one temperature T that minimises the cross-entropy of logits / T (temperature scaling, Guo et al.):
    fitted on validation logits; it rescales confidence and never changes a prediction."""
    labels = torch.as_tensor(labels)
    log_t = torch.zeros((), requires_grad=True)  # T = exp(log_t) stays positive
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits.detach() / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def calibration(val: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor] | None
                ) -> dict[str, float]:
    """`temperature` fitted on validation, and ECE before / after it on validation and (when there is one) test."""
    t = fit_temperature(*val)
    out = {"temperature": t, "val_ece": ece(*val), "val_ece_calibrated": ece(*val, temperature=t)}
    if test is not None:
        out.update(test_ece=ece(*test), test_ece_calibrated=ece(*test, temperature=t))
    return out


def predictions_uri(output: str) -> str:
    """Where a candidate's validation predictions lie, beside its weights (`outputs/head.pt` ->
    `outputs/head.val-predictions.pt`)."""
    return output.removesuffix(".pt") + ".val-predictions.pt"


def save_predictions(output: str, logits: torch.Tensor, labels: Any) -> None:
    """Record a candidate's predicted class and the label of every validation image, for the paired test."""
    models.save_tensors(predictions_uri(output), {"predicted": logits.argmax(1).to(torch.int64).cpu(),
                                                  "labels": torch.as_tensor(labels).to(torch.int64).cpu()})
