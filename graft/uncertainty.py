"""What a ledger's accuracies are worth: the 95% Wilson interval beside each validation and test accuracy (from the
size of the split it was measured on, `Ledger.splits`) and the warning when the validation split is too small for
the choices made on it (`graft/stats.py`'s rule). `graft run`'s summary, `graft status` (table and JSON) and the
list of runs all show them from here."""

from __future__ import annotations

from typing import Any

from graft.stats import Interval, small_validation_warning, wilson

#: The accuracies shown with an interval, and the split each is measured on.
ACCURACIES = {"val_accuracy": "validation", "test_accuracy": "test"}
#: How `graft_trainer/selection.py` words an export that had nothing to choose between.
ONLY_CANDIDATE = "is the only candidate"


def split_sizes(ledger: Any, stage_type: str) -> dict[str, int]:
    """The split sizes a stage's metrics were measured on: its own data set's (Pretrain), else the target's; empty
    for a ledger written before they were recorded."""
    return ledger.stage_splits.get(stage_type) or ledger.splits or {}


def intervals(ledger: Any, stage_type: str, metrics: dict[str, float]) -> dict[str, Interval]:
    """Each of `metrics`' accuracies (`ACCURACIES`) whose split size is known, with its interval."""
    sizes = split_sizes(ledger, stage_type)
    found = {}
    for key, split in ACCURACIES.items():
        n = sizes.get(split)
        if key in metrics and n and 0.0 <= metrics[key] <= 1.0:
            found[key] = wilson(metrics[key], n)
    return found


def text(interval: Interval) -> str:
    """`0.467 [0.38, 0.56] n=90`."""
    return f"{interval.accuracy:.3f} [{interval.low:.2f}, {interval.high:.2f}] n={interval.n}"


def metric_text(key: str, value: float, found: dict[str, Interval]) -> str:
    """`key=value`, with the interval when `found` has one for it."""
    return f"{key}={text(found[key])}" if key in found else f"{key}={value:.3f}"


def choices(ledger: Any) -> list[str]:
    """The choices the job made on the target's validation split, in words (a sweep's setting, the exported stage)."""
    made = [f"the {rec.type} sweep chose 1 of {len(rec.sweep)} settings" for rec in ledger.stages
            if rec.sweep and len(rec.sweep) > 1]
    if ledger.export and ONLY_CANDIDATE not in ledger.export.get("reason", ""):
        made.append(f"the export chose {ledger.export['stage']} over the other candidates")
    return made


def warnings(ledger: Any) -> list[str]:
    """The small-validation warning (`stats.small_validation_warning`) when the target's validation split is under
    the rule's size and the job chose something on it, naming the choices; else nothing."""
    n = (ledger.splits or {}).get("validation")
    made = choices(ledger)
    warning = small_validation_warning(n) if n is not None and made else None
    return [f"{warning} (choices made on it: {'; '.join(made)})"] if warning else []


def annotate(doc: dict[str, Any], ledger: Any) -> dict[str, Any]:
    """`graft status -o json`'s document: the ledger's, each stage with `<accuracy>_interval` ([low, high]) and
    `<accuracy>_n` beside its metrics, and the job's `warnings`."""
    for stage, rec in zip(doc["stages"], ledger.stages, strict=True):
        for key, interval in intervals(ledger, rec.type, rec.metrics).items():
            stage[f"{key}_interval"] = [interval.low, interval.high]
            stage[f"{key}_n"] = interval.n
    doc["warnings"] = warnings(ledger)
    return doc
