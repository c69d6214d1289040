"""Weight interpolation (WiSE-FT, Wortsman et al. 2022): alpha x fine-tuned + (1 - alpha) x LP weights, where the
LP model is the pretrained backbone with the Head's head, evaluated on validation for each alpha; the best alpha's
model becomes an export candidate. Validation picks alpha; the test set is only reported."""

from __future__ import annotations

from typing import Any

import torch

from graft_trainer import models, scoring
from graft_trainer.sweep import better

#: The alphas `interpolate: auto` tries: 0 (the LP model), 0.1, ..., 1 (the fine-tuned model).
AUTO_ALPHAS = tuple(round(i / 10, 1) for i in range(11))


def mix(lp: dict[str, torch.Tensor], ft: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """alpha x ft + (1 - alpha) x lp for floating tensors; integer buffers (BatchNorm's counters) are ft's."""
    return {k: (alpha * v + (1 - alpha) * lp[k]) if v.is_floating_point() else v.clone() for k, v in ft.items()}


def curve(lp: dict[str, torch.Tensor], ft: dict[str, torch.Tensor], alphas, net: models.GraftNet, val, size: int,
          preset: dict) -> tuple[list[dict[str, float]], int, dict[str, torch.Tensor]]:
    """(one row per alpha with its validation accuracy and loss, the best row's index, its weights)."""
    rows, best, best_state = [], 0, None
    for i, alpha in enumerate(alphas):
        state = mix(lp, ft, alpha)
        net.load_state_dict(state)
        row = {"alpha": float(alpha), **scoring.metrics(scoring.network_logits(net, val, size, preset), val.labels,
                                                       "val")}
        rows.append(row)
        if best_state is None or better((row["val_accuracy"], row["val_loss"]),
                                        (rows[best]["val_accuracy"], rows[best]["val_loss"]), "val_accuracy"):
            best, best_state = i, state
    assert best_state is not None
    return rows, best, best_state


def alphas_of(stage: Any) -> tuple[float, ...]:
    """The alphas a FullFineTune stage asks for: AUTO_ALPHAS, its one fixed alpha, or none."""
    if stage.interpolation_alpha is not None:
        return (stage.interpolation_alpha,)
    return AUTO_ALPHAS if stage.interpolate == "auto" else ()
