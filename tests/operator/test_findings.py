"""A stage that learned nothing in the TransferJob's status (issue 27, part 1): the ledger's finding reaches the stage's
status entry, a `Degraded` condition (reason NotLearning), the Failed condition's reason when the job stopped for it,
and a Warning Event (`graft_operator/findings.py`)."""

from __future__ import annotations

import pytest

from graft.api.models import StageState, TransferJobStatus
from graft.api.validation import validate_spec
from graft.ledger import Ledger, StageRecord
from graft_operator import findings, status

SPEC, _ = validate_spec({
    "model": {"backbone": "smallcnn", "numClasses": 10, "weights": "s3://models/w.pt"},
    "data": {"train": "builtin:digits"},
    "stages": [{"type": "FrozenFeatures"}, {"type": "Head"}],
    "storage": {"uri": "s3://bucket/jobs"},
    "runPolicy": {"backoffLimit": 0},
})
FINDING = {"kind": "NotLearning", "message": "did not learn: validation accuracy 0.110 on 200 images ..."}


def _ledger(head_state: StageState, finding: dict | None) -> dict:
    """The ledger's projection, as the trainer's ledger makes it (`Ledger.to_status`)."""
    stages = [StageRecord(type="FrozenFeatures", state=StageState.SUCCEEDED),
              StageRecord(type="Head", state=head_state, finding=finding,
                          message=finding["message"] if finding and head_state == StageState.FAILED else None)]
    return Ledger(job_uid="uid", stages=stages, model_uri="s3://bucket/jobs/uid/model"
                  if head_state == StageState.SUCCEEDED else None).to_status()


def _rj(jds, job_status, **extra):
    return {"metadata": {"name": "rj"}, "status": {"jobDeploymentStatus": jds, "jobStatus": job_status, **extra}}


def _build(rayjob, ledger, current=None):
    state = status.derive_state(spec=SPEC, rayjob=rayjob, ledger=ledger)
    return status.build_status(spec=SPEC, generation=1, current=current, state=state, rayjob_name="rj", created=True,
                               rayjob=rayjob, ledger=ledger, storage_uri="s3://bucket/jobs/uid",
                               now="2026-01-01T00:00:10Z")


def _conds(st):
    return {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}


DEGRADED = ("True", "NotLearning")


@pytest.mark.parametrize(("rayjob", "head", "finding", "phase", "reason", "degraded"), [
    (_rj("Failed", "FAILED", failed=1), StageState.FAILED, FINDING, "Failed", "NotLearning", DEGRADED),
    (_rj("Complete", "SUCCEEDED"), StageState.SUCCEEDED, FINDING, "Succeeded", "Succeeded", DEGRADED),
    (_rj("Complete", "SUCCEEDED"), StageState.SUCCEEDED, None, "Succeeded", "Succeeded", None),
    (_rj("Failed", "FAILED", failed=1), StageState.FAILED, None, "Failed", "BackoffLimitExceeded", None),
    # the deadline is what ended the job, whatever the stage found before
    (_rj("Failed", "FAILED", reason="DeadlineExceeded"), StageState.FAILED, FINDING, "Failed", "DeadlineExceeded",
     DEGRADED),
], ids=["fail-action-failed-not-learning", "warn-action-succeeded-degraded", "learned", "other-failure",
        "deadline-first"])
def test_the_finding_reaches_the_phase_reason_and_degraded_condition(rayjob, head, finding, phase, reason,
                                                                     degraded):
    st = _build(rayjob, _ledger(head, finding))
    assert (st["phase"], st["reason"]) == (phase, reason)
    assert _conds(st).get("Degraded") == degraded
    assert st["stages"][1].get("finding") == finding
    if degraded:
        cond = next(c for c in st["conditions"] if c["type"] == "Degraded")
        assert cond["message"] == f"stage Head {FINDING['message']}"
    TransferJobStatus.model_validate(st)  # what the CRD's status schema keeps


def test_a_warning_event_says_it_once_and_not_twice_when_the_failure_says_it():
    running = _build(_rj("Running", "RUNNING"), _ledger(StageState.RUNNING, None))
    warned = _build(_rj("Complete", "SUCCEEDED"), _ledger(StageState.SUCCEEDED, FINDING), running)
    moved = status.transition(running, warned)
    assert moved == ("Normal", "Succeeded", warned["message"])
    assert findings.event(running, warned, moved) == ("Warning", "NotLearning", f"stage Head {FINDING['message']}")
    assert findings.event(warned, warned, None) is None  # said already
    failed = _build(_rj("Failed", "FAILED", failed=1), _ledger(StageState.FAILED, FINDING), running)
    moved = status.transition(running, failed)
    assert moved[:2] == ("Warning", "NotLearning") and FINDING["message"] in moved[2]
    assert findings.event(running, failed, moved) is None


def test_a_finished_jobs_late_ledger_read_brings_the_degraded_condition():
    finished = _build(_rj("Complete", "SUCCEEDED"), None)
    assert "Degraded" not in _conds(finished)
    late = status.refresh_ledger(finished, ledger=_ledger(StageState.SUCCEEDED, FINDING), problem=None,
                                 answered=True, generation=1, now="2026-01-01T00:00:20Z")
    assert _conds(late)["Degraded"] == DEGRADED
    assert (late["phase"], late["reason"]) == ("Succeeded", "Succeeded")
