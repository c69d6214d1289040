"""Training curves of a run as a PNG: per training stage, loss (train/validation) and validation accuracy."""

from __future__ import annotations

import io

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
