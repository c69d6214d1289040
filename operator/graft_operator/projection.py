"""The ledger's part of a TransferJob status: the stages and their progress, the model, the MLflow run.

Before the trainer has written a ledger the status lists the planned stages; afterwards the latest ledger read that
answered (`graft.ledger.Ledger.to_status`), or, until one has, what the status showed last.
"""

from __future__ import annotations

import math
from typing import Any

from graft.api.models import ModelStatus, StageState, StageStatus, TrackingStatus, TransferJobSpec


def _clean_metrics(stages: list[dict[str, Any]]) -> list[StageStatus]:
    # JSON has no NaN/Infinity: the API server would reject the whole patch.
    out = []
    for s in stages:
        s = dict(s)
        if "metrics" in s:
            s["metrics"] = {k: v for k, v in s["metrics"].items() if isinstance(v, (int, float)) and math.isfinite(v)}
        out.append(StageStatus.model_validate(s))
    return out


def planned(spec: TransferJobSpec) -> dict[str, Any]:
    """The ledger part of the status before the trainer has written a ledger: every stage Pending."""
    stages = [{"type": s.type, "state": StageState.PENDING} for s in spec.stages]
    return {"stages": stages, "stage": stages[0]["type"], "progress": f"0/{len(stages)}", "modelURI": None}


def last(current: dict[str, Any]) -> dict[str, Any] | None:
    """The ledger part of the status as written last (kept while no newer read has answered)."""
    if not current.get("stages"):
        return None
    return {k: current.get(k) for k in ("stages", "stage", "progress", "modelURI", "model", "tracking")}


def fields(projection: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """The status fields (model names) that carry a ledger projection."""
    tracking = projection.get("tracking") or current.get("tracking")
    model = projection.get("model") or current.get("model")
    return {
        "stage": projection.get("stage"),
        "progress": projection.get("progress"),
        "stages": _clean_metrics(projection.get("stages") or []),
        "model_uri": projection.get("modelURI") or current.get("modelURI"),
        "model": ModelStatus.model_validate(model) if model else None,
        "tracking": TrackingStatus.model_validate(tracking) if tracking else None,
    }
