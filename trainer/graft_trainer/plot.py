"""Plots as PNGs: a run's training curves (per training stage, loss (train/validation) and validation accuracy)
and an evaluation's confusion matrix."""

from __future__ import annotations

import io
from typing import Any

from graft import storage
from graft.ledger import Ledger


def plot_curves(ledger: Ledger) -> bytes:
    """The PNG bytes of the curves in the ledger's per-epoch history."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [s for s in ledger.stages if s.history]
    cols = max(1, len(stages))
    fig, axes = plt.subplots(2, cols, figsize=(4.2 * cols, 6), squeeze=False)
    for col, rec in enumerate(stages):
        epochs = [h.get("epoch", i + 1) for i, h in enumerate(rec.history)]
        loss_ax, acc_ax = axes[0][col], axes[1][col]
        loss_ax.plot(epochs, [h.get("train_loss") for h in rec.history], label="train")
        loss_ax.plot(epochs, [h.get("val_loss") for h in rec.history], label="validation")
        loss_ax.set_title(f"{rec.type}: loss")
        loss_ax.legend()
        acc_ax.plot(epochs, [h.get("val_accuracy") for h in rec.history], color="tab:green")
        acc_ax.set_title(f"{rec.type}: validation accuracy")
        acc_ax.set_ylim(0, 1)
        acc_ax.set_xlabel("epoch")
    if not stages:
        axes[0][0].text(0.5, 0.5, "no per-epoch history", ha="center")
    fig.suptitle(ledger.job_name or ledger.job_uid)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def write_plot(ledger: Ledger, root: str) -> str:
    """Write `<root>/curves.png`; returns its URI."""
    uri = storage.join(root, "curves.png")
    storage.write_bytes(uri, plot_curves(ledger))
    return uri


def plot_confusion(report: dict[str, Any]) -> bytes:
    """The PNG bytes of an evaluation's confusion matrix (`evaluate.Evaluation.report()`): rows true class,
    columns predicted, counts in the cells."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [c["label"] for c in report["classes"]]
    matrix = np.asarray(report["confusion_matrix"])
    side = min(24.0, 2.5 + 0.45 * len(labels))
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    shown = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, rotation=45 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(labels) <= 30:  # counts stay legible up to about this many classes
        top = matrix.max() if matrix.size else 0
        for (i, j), n in np.ndenumerate(matrix):
            ax.text(j, i, str(n), ha="center", va="center", color="white" if n > top / 2 else "black", fontsize=8)
    ax.set_title(f"accuracy {report['accuracy']:.3f} ({report['correct']} of {report['images']})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
