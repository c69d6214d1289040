"""Did a training stage learn anything? The check after each of Pretrain, Head and FullFineTune (`spec.checks.learning`,
docs/learning-check.md): its validation accuracy against chance, and its training loss against its start.

A stage that did not learn gets the finding `NotLearning` (the ledger's `StageRecord.finding`); the driver then fails
it before anything is exported, or, with `action: Warn`, goes on and the export carries the finding. Nothing here
chooses a model: the check reads what the stage already measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from graft import stats
from graft.api.models import LearningCheck

#: The finding's kind (the ledger, the status's `stages[].finding.kind`, the operator's condition reason).
NOT_LEARNING = "NotLearning"


@dataclass(frozen=True)
class Evidence:
    """What a stage measured that tells whether it learned."""

    #: Its result's validation accuracy (the best of `candidates` validation scores).
    val_accuracy: float | None
    #: The validation split's labels (for its size and the largest class's share).
    val_labels: np.ndarray | None
    num_classes: int
    #: How many validation scores the result was chosen from (epochs, times the Head sweep's settings).
    candidates: int
    #: The training loss of each epoch, in order.
    train_losses: list[float]


@dataclass(frozen=True)
class Verdict:
    """The check's outcome: `line` says what was measured (always), `finding` is set when the stage did not learn."""

    line: str
    finding: dict[str, str] | None = None


def chance(labels: np.ndarray, num_classes: int) -> tuple[float, str]:
    """(the accuracy to beat, what it is): the larger of a uniform guess's 1/classes and always answering the
    validation split's most frequent class."""
    share = float(np.bincount(labels.astype(np.int64), minlength=num_classes).max() / len(labels))
    uniform = 1.0 / num_classes
    if share > uniform:
        return share, f"the largest class's share {share:.3f}"
    return uniform, f"1/{num_classes}"


def accuracy_test(ev: Evidence, significance: float) -> tuple[bool | None, str]:
    """(passed, or None when the split is too small to tell; the line saying so). One-sided Wilson score test of
    accuracy > chance at `significance / candidates` (Bonferroni: the result is the best of that many scores)."""
    if ev.val_accuracy is None or ev.val_labels is None or len(ev.val_labels) == 0:
        return None, "accuracy not judged: no validation score"
    n, level = len(ev.val_labels), significance / max(1, ev.candidates)
    p0, what = chance(ev.val_labels, ev.num_classes)
    z = NormalDist().inv_cdf(1.0 - level)
    # The split can tell only if an accuracy halfway from chance to 1 would pass at this level.
    if stats.wilson((1.0 + p0) / 2.0, n, z).low <= p0:
        return None, f"accuracy not judged: {n} validation images cannot tell a model from chance ({what})"
    low = stats.wilson(ev.val_accuracy, n, z).low
    scores = f" (best of {ev.candidates} validation scores)" if ev.candidates > 1 else ""
    line = (f"validation accuracy {ev.val_accuracy:.3f} on {n} images{scores}, one-sided lower bound {low:.3f} at "
            f"level {level:.2g}, against chance {p0:.3f} ({what})")
    return low > p0, line


def loss_test(ev: Evidence, min_drop: float) -> tuple[bool | None, str]:
    """(passed, or None when not judged; the line): the last epoch's training loss at most (1 - min_drop) times its
    start, the larger of the first epoch's and ln(classes), a uniform guess's loss."""
    losses = [x for x in ev.train_losses if math.isfinite(x)]
    if min_drop <= 0.0:
        return None, "loss not judged: minLossDrop is 0"
    if len(losses) < len(ev.train_losses) and ev.train_losses:
        return False, f"training loss not finite ({ev.train_losses[-1]})"
    if not losses:
        return None, "loss not judged: no training loss recorded"
    start = max(losses[0], math.log(ev.num_classes))
    bound = (1.0 - min_drop) * start
    return losses[-1] <= bound, f"training loss {losses[0]:.3f} -> {losses[-1]:.3f} (at most {bound:.3f} to pass)"


def judge(ev: Evidence, check: LearningCheck) -> Verdict:
    """The verdict on one stage: a finding when the accuracy test failed, or when it could not be judged and the loss
    test failed. The accuracy is the direct evidence; the loss only stands in for it on a split too small to tell (a
    Head chosen for its strong weight decay or label smoothing keeps a high training loss and still classifies)."""
    (acc_ok, acc_line), (loss_ok, loss_line) = accuracy_test(ev, check.significance), loss_test(ev, check.min_loss_drop)
    line = f"{acc_line}; {loss_line}"
    if acc_ok or (acc_ok is None and loss_ok is not False):
        return Verdict(line)
    failed = [text for ok, text in ((acc_ok, acc_line), (loss_ok, loss_line)) if ok is False]
    message = (f"did not learn: {'; '.join(failed)}. Check the labels, the learning rate and the data; "
               "spec.checks.learning.action: Warn goes on with the finding")
    return Verdict(line, {"kind": NOT_LEARNING, "message": message})


def ledger_fields(verdict: Verdict | None) -> dict[str, Any]:
    """The StageRecord fields a verdict sets (`learning`, `finding`)."""
    if verdict is None:
        return {}
    return {"learning": verdict.line, "finding": verdict.finding}


def verdict(kind: Any, ctx: Any, cfg: Any, result: Any, check: LearningCheck) -> Verdict | None:
    """The verdict on a stage's result (`kind`: its StageType), None for a stage that trains nothing."""
    evidence = kind.evidence(ctx, cfg, result)
    return judge(evidence, check) if evidence is not None else None
