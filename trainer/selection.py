"""Which model the job exports: the best candidate by validation among the stages that make a classifier of the
target classes (LP = the Head on the frozen backbone, FullFineTune), never silently a worse one than the job had.
The held-out test set is reported beside each candidate and chooses nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graft.trainer.sweep import better

from graft.api.models import StageState
from graft.ledger import Ledger

#: The stages whose result is a classifier of the target classes, in the order a tie is settled (the first wins:
#: the linear probe keeps the pretrained features, Kumar et al.'s safer choice out of distribution).
CANDIDATE_STAGES = ("Head", "FullFineTune")
NAMES = {"Head": "LP (Head on the frozen backbone)", "FullFineTune": "FullFineTune",
         "Interpolated": "WiSE-FT interpolation of LP and FullFineTune"}
#: The weight interpolation's candidate comes after both: it includes them as alpha 0 and 1, so it wins only
#: where some alpha in between is better on validation.
INTERPOLATED = "Interpolated"
RULE = "the highest val_accuracy, then the lowest val_loss (validation only; the test set chooses nothing)"


@dataclass(frozen=True)
class Candidate:
    stage: str
    metrics: dict[str, float]

    @property
    def score(self) -> tuple[float, float]:
        return self.metrics["val_accuracy"], self.metrics["val_loss"]

    def summary(self) -> dict[str, Any]:
        keys = ("val_accuracy", "val_loss", "test_accuracy", "test_loss", "best_epoch", "alpha")
        return {"stage": self.stage, "model": NAMES[self.stage], **{k: self.metrics[k] for k in keys
                                                                    if k in self.metrics}}


def candidates(ledger: Ledger) -> list[Candidate]:
    """The finished stages that made a target classifier with validation figures, in CANDIDATE_STAGES order."""
    found = []
    for stage in CANDIDATE_STAGES:
        rec = next((s for s in ledger.stages if s.type == stage), None)
        if rec and rec.state == StageState.SUCCEEDED and {"val_accuracy", "val_loss"} <= set(rec.metrics):
            found.append(Candidate(stage, dict(rec.metrics)))
            if rec.interpolation:
                found.append(Candidate(INTERPOLATED, dict(rec.interpolation["metrics"])))
    return found


def choose(found: list[Candidate]) -> tuple[Candidate, str]:
    """The best candidate by validation and why, in words."""
    chosen = found[0]
    for c in found[1:]:
        if better(c.score, chosen.score, "val_accuracy"):
            chosen = c
    others = [c for c in found if c is not chosen]
    if not others:
        return chosen, f"{NAMES[chosen.stage]} is the only candidate"
    versus = "; ".join(f"{NAMES[c.stage]} {c.metrics['val_accuracy']:.3f} (val_loss {c.metrics['val_loss']:.3f})"
                       for c in others)
    best = f"val_accuracy {chosen.metrics['val_accuracy']:.3f} (val_loss {chosen.metrics['val_loss']:.3f})"
    return chosen, f"{NAMES[chosen.stage]} has the best validation: {best} against {versus}"
