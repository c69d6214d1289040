"""What the trainer's checks found wrong with a job's results (the ledger's `stages[].finding`, see
`graft_trainer/learning.py`), as the status says it: the `Degraded` condition, the failure reason, the Warning Event.

A finding is not a crash: a stage that learned nothing ran to its end. Kubernetes' API conventions keep such
"works, but not as it should" states in a condition of their own (Deployments' `Progressing`/`ReplicaFailure`,
kstatus' abnormal-true conditions), so `Degraded` is set beside whatever phase the job is in, and is absent while
no stage has a finding (like `LedgerReadable`: the conventions' Unknown).
"""

from __future__ import annotations

from typing import Any

from graft_operator.conditions import ConditionType, Reason


def first(ledger: dict[str, Any] | None) -> tuple[str, dict[str, str]] | None:
    """(stage type, finding) of the first stage of a ledger projection (or status) that has a finding, else None."""
    for stage in (ledger or {}).get("stages") or []:
        found = stage.get("finding")
        if found:
            return stage["type"], found
    return None


def failure_reason(ledger: dict[str, Any] | None) -> str | None:
    """The Failed condition's reason when the failed stage failed for a finding (NotLearning), else None."""
    failed = next((s for s in (ledger or {}).get("stages") or [] if s.get("state") == "Failed"), None)
    if failed and failed.get("finding"):
        return failed["finding"].get("kind") or Reason.NOT_LEARNING  # the kind is one CamelCase word, a reason
    return None


def degraded_condition(ledger: dict[str, Any] | None) -> dict[str, Any] | None:
    """The Degraded condition (without times): True, with the finding's kind as its reason and the stage and its
    message as its message, when a stage has a finding; None (absent) otherwise."""
    found = first(ledger)
    if found is None:
        return None
    stage, finding = found
    return {"type": ConditionType.DEGRADED, "status": "True", "reason": finding.get("kind") or Reason.NOT_LEARNING,
            "message": f"stage {stage} {finding.get('message', '')}".strip()}


def event(current: dict[str, Any] | None, new: dict[str, Any], moved: tuple[str, str, str] | None
          ) -> tuple[str, str, str] | None:
    """A Warning Event when the status newly says Degraded (or says it of another finding); None when the
    transition's own Event (`moved`) says it already (a job Failed for NotLearning)."""
    before, after = (_degraded(s) for s in (current, new))
    if after is None or (before is not None and before.get("message") == after.get("message")):
        return None
    if moved is not None and moved[1] == after.get("reason"):
        return None
    return "Warning", after.get("reason") or Reason.NOT_LEARNING, after.get("message") or ""


def _degraded(status: dict[str, Any] | None) -> dict[str, Any] | None:
    return next((c for c in (status or {}).get("conditions") or [] if c.get("type") == ConditionType.DEGRADED
                 and c.get("status") == "True"), None)
