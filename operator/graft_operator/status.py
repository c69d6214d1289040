"""The TransferJob status as a pure projection of the RayJob's status and the ledger.

Conditions are the source of truth; `phase` is derived from them for the printer column; `reason` and
`message` mirror the latest transition. The status is built through the API's pydantic status models
(`graft.api.models.TransferJobStatus`), the same ones the CRD's schema is generated from, and written as the dict they
dump to. Nothing here does I/O: the handlers feed in what they observed and write the result only when it differs
from what is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graft import joblogs
from graft.api.models import Condition, Phase, TransferJobSpec, TransferJobStatus
from graft_operator import findings, projection
from graft_operator.builder import LABEL_QUEUE
from graft_operator.conditions import JDS, PENDING_PROBLEMS, STARTING, SUSPENDED, ConditionType, Reason

TERMINAL = (Phase.SUCCEEDED, Phase.FAILED)
LEDGER_CONDITION = ConditionType.LEDGER_READABLE
C = ConditionType


@dataclass(frozen=True)
class State:
    """Where a job stands: the phase, and why (one CamelCase word plus a sentence)."""

    phase: str
    reason: str
    message: str


def is_terminal(status: dict[str, Any] | None) -> bool:
    return bool(status) and status.get("phase") in TERMINAL


def condition(status: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in (status or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None


def phase_of(conditions: list[dict[str, Any]]) -> str:
    """The printer-column phase: Failed, else Succeeded, else Suspended, else Running, else Pending."""
    true = {c["type"] for c in conditions if c.get("status") == "True"}
    for type_ in (C.FAILED, C.SUCCEEDED, C.SUSPENDED, C.RUNNING):
        if type_ in true:
            return Phase(type_)
    return Phase.PENDING


def _failure_reason(rj_status: dict[str, Any], spec: TransferJobSpec) -> str:
    reason = rj_status.get("reason") or ""
    if reason == Reason.DEADLINE_EXCEEDED:
        return reason
    failed = int(rj_status.get("failed") or 0)
    if failed > spec.run_policy.backoff_limit:
        return Reason.BACKOFF_LIMIT_EXCEEDED
    return reason or Reason.JOB_FAILED


def _failure_message(rj_status: dict[str, Any], ledger: dict[str, Any] | None, spec: TransferJobSpec) -> str:
    parts = []
    reason = _failure_reason(rj_status, spec)
    if reason == Reason.DEADLINE_EXCEEDED:
        deadline = spec.run_policy.active_deadline_seconds
        if deadline is not None:
            parts.append(f"the job ran longer than activeDeadlineSeconds ({deadline}s)")
        else:
            # No deadline in the spec (e.g. removed after KubeRay had already failed the RayJob): only KubeRay
            # knows which one passed, and its message (added below) says.
            parts.append("KubeRay ended the RayJob at a deadline (spec.runPolicy.activeDeadlineSeconds is not set)")
    elif reason == Reason.BACKOFF_LIMIT_EXCEEDED:
        failed = int(rj_status.get("failed") or 0)
        parts.append(f"{failed} attempt(s) failed; backoffLimit is {spec.run_policy.backoff_limit}")
    failed_stage = next((s for s in (ledger or {}).get("stages") or [] if s.get("state") == Phase.FAILED), None)
    if failed_stage:
        detail = failed_stage.get("message") or "no message"
        parts.append(f"stage {failed_stage['type']} failed: {detail}")
    elif rj_status.get("message"):
        parts.append(str(rj_status["message"]))
    return "; ".join(parts) or "the Ray job failed"


def _running_message(ledger: dict[str, Any] | None) -> str:
    if not ledger or not ledger.get("stage"):
        return "the Ray job is running"
    return f"stage {ledger['stage']} running ({ledger.get('progress')} stages finished)"


def rayjob_view(rayjob: Any) -> dict[str, Any]:
    """What the operator reads of a RayJob it watches (its name and labels, `spec.suspend`, KubeRay's status), without
    the cluster spec that is most of its size: kopf's index keeps this for every RayJob of ours."""
    meta = rayjob.get("metadata") or {}
    return {
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                     "labels": meta.get("labels") or {}},
        "spec": {"suspend": (rayjob.get("spec") or {}).get("suspend")},
        "status": rayjob.get("status") or {},
    }


def _finished_state(rj_status: dict[str, Any], ledger: dict[str, Any] | None, spec: TransferJobSpec) -> State:
    """A RayJob KubeRay has finished (Complete or Failed)."""
    if rj_status.get("jobDeploymentStatus") == JDS.COMPLETE and rj_status.get("jobStatus") == "SUCCEEDED":
        if ledger is None:
            # Only the RayJob's word: say so rather than claim stage results nobody has read.
            return State(Phase.SUCCEEDED, Reason.SUCCEEDED, "the RayJob succeeded; no ledger was read, so per-stage "
                         "results are not shown")
        model = ledger.get("modelURI")
        return State(Phase.SUCCEEDED, Reason.SUCCEEDED, f"all stages succeeded; model at {model}" if model else
                     "all stages succeeded")
    reason = _failure_reason(rj_status, spec)
    if reason != Reason.DEADLINE_EXCEEDED:  # the stage that stopped the job for a finding says why (NotLearning)
        reason = findings.failure_reason(ledger) or reason
    return State(Phase.FAILED, reason, _failure_message(rj_status, ledger, spec))


def derive_state(
    *,
    spec: TransferJobSpec,
    rayjob: dict[str, Any] | None,
    ledger: dict[str, Any] | None,
    pending: tuple[str, str] | None = None,
) -> State:
    """The phase a started job is in, from its RayJob (None when not yet seen) and its ledger projection."""
    rj_status = (rayjob or {}).get("status") or {}
    jds = rj_status.get("jobDeploymentStatus") or ""
    if jds in (JDS.COMPLETE, JDS.FAILED):
        return _finished_state(rj_status, ledger, spec)
    # Suspended before KubeRay has written any status (created suspended); once it has, its word counts, so a
    # suspend request does not flap Suspended -> Running -> Suspended while KubeRay catches up.
    queue = ((rayjob or {}).get("metadata", {}).get("labels") or {}).get(LABEL_QUEUE)
    held = jds in SUSPENDED or (((rayjob or {}).get("spec") or {}).get("suspend") and not rj_status)
    if held and queue and not spec.run_policy.suspend:
        # Not the user's suspension: Kueue holds a queued RayJob suspended until its quota admits it (the one
        # place that tells; Kueue's webhook suspends it at creation, before KubeRay writes any status).
        return State(Phase.PENDING, Reason.QUEUED_BY_KUEUE, f"waiting for Kueue to admit the job in queue {queue} "
                     "(quota)")
    if jds in SUSPENDED or (spec.run_policy.suspend and not rj_status):
        return State(Phase.SUSPENDED, Reason.SUSPENDED, "the job is suspended: its Ray cluster is deleted, progress "
                     "is kept")
    if jds == JDS.RUNNING:
        return State(Phase.RUNNING, Reason.RUNNING, _running_message(ledger))
    if jds == JDS.RETRYING:
        failed = int(rj_status.get("failed") or 0)
        detail = _failure_message(rj_status, ledger, spec)
        return State(Phase.PENDING, Reason.RETRYING, f"attempt {failed} failed ({detail}); retrying from the ledger "
                     f"(backoffLimit {spec.run_policy.backoff_limit})")
    if rayjob is None:
        return State(Phase.PENDING, Reason.CREATING, "creating the RayJob")
    if pending is not None:
        return State(Phase.PENDING, pending[0], pending[1])
    if rj_status.get("message"):
        return State(Phase.PENDING, Reason.CLUSTER_STARTING,
                     f"waiting for the Ray cluster to start: {rj_status['message']}")
    return State(Phase.PENDING, Reason.CLUSTER_STARTING, "the RayJob is created; waiting for its Ray cluster to start")


def _cond(type_: str, true: bool, reason: str, message: str) -> dict[str, Any]:
    return {"type": type_, "status": "True" if true else "False", "reason": reason, "message": message}


def conditions_for(state: State, *, created: bool, created_message: str) -> list[dict[str, Any]]:
    """The seven conditions (without times) for a state."""
    phase, reason, message = state.phase, state.reason, state.message
    failed = phase == Phase.FAILED
    succeeded = phase == Phase.SUCCEEDED
    suspended = phase == Phase.SUSPENDED
    active = phase in (Phase.PENDING, Phase.RUNNING)
    return [
        _cond(C.CREATED, created, Reason.RAYJOB_CREATED if created else reason,
              created_message if created else message),
        # While Pending, the Running condition carries why the job is not running yet (ClusterStarting, ...).
        _cond(C.RUNNING, phase == Phase.RUNNING, reason, message),
        _cond(C.SUSPENDED, suspended, reason if suspended else Reason.NOT_SUSPENDED,
              message if suspended else "the job is not suspended"),
        _cond(C.SUCCEEDED, succeeded, reason if succeeded else Reason.NOT_SUCCEEDED,
              message if succeeded else "not all stages have succeeded"),
        _cond(C.FAILED, failed, reason if failed else Reason.NOT_FAILED,
              message if failed else "the job has not failed"),
        # kstatus: Reconciling while the operator still works towards the desired state; Stalled on failure.
        _cond(C.RECONCILING, active, phase, message if active else f"the job is {phase}"),
        _cond(C.STALLED, failed, reason if failed else Reason.NOT_STALLED,
              message if failed else "the job is not stalled"),
    ]


def ledger_condition(
    current: dict[str, Any] | None, *, problem: tuple[str, str] | None, answered: bool
) -> dict[str, Any] | None:
    """The LedgerReadable condition (without times): False with `problem` (reason, message) while the job's ledger
    reads fail; True again once a read has `answered`; otherwise as it is (absent if reads never failed)."""
    before = condition(current, LEDGER_CONDITION)
    if problem is not None:
        return _cond(LEDGER_CONDITION, False, *problem)
    if before is None:
        return None
    if answered:
        return _cond(LEDGER_CONDITION, True, Reason.LEDGER_READ, "the ledger answered again; stage progress is "
                     "current")
    return {k: before.get(k, "") for k in ("type", "status", "reason", "message")}


def stamp(new: list[dict[str, Any]], old: list[dict[str, Any]], *, now: str, generation: int | None
          ) -> list[Condition]:
    """The conditions with lastTransitionTime (kept unless the condition's status flipped) and observedGeneration."""
    previous = {c.get("type"): c for c in old or []}
    out = []
    for c in new:
        before = previous.get(c["type"])
        flipped = before is None or before.get("status") != c["status"]
        when = now if flipped else before.get("lastTransitionTime", now)
        extra = {} if generation is None else {"observed_generation": generation}
        out.append(Condition(**c, last_transition_time=when, **extra))
    return out


def dump(status: TransferJobStatus) -> dict[str, Any]:
    """The status as written (camelCase): every field that was set, None included (a merge patch's delete)."""
    return status.model_dump(by_alias=True, mode="json", exclude_unset=True)


def _kuberay_fields(state: State, current: dict[str, Any], rayjob: dict[str, Any] | None, now: str
                    ) -> dict[str, Any]:
    """What the status copies from the RayJob's status (kept from `current` while the RayJob does not say), and the
    attempt count and times that follow from it."""
    rj_status = (rayjob or {}).get("status") or {}
    terminal = state.phase in TERMINAL
    fields = {
        "job_deployment_status": rj_status.get("jobDeploymentStatus") or current.get("jobDeploymentStatus"),
        "job_status": rj_status.get("jobStatus") or current.get("jobStatus"),
        "dashboard_url": rj_status.get("dashboardURL") or current.get("dashboardURL"),
        "attempts": current.get("attempts"),
        "start_time": current.get("startTime") or rj_status.get("startTime") or (
            now if state.phase == Phase.RUNNING or terminal else None),
        "completion_time": (current.get("completionTime") or rj_status.get("endTime") or now) if terminal else None,
    }
    if rayjob is not None:
        # KubeRay counts failed attempts; the one running (or the last, once finished) is one more.
        failed = int(rj_status.get("failed") or 0)
        fields["attempts"] = max(1, failed if state.phase == Phase.FAILED and failed else failed + 1)
    return fields


def build_status(
    *,
    spec: TransferJobSpec,
    generation: int | None,
    current: dict[str, Any] | None,
    state: State,
    rayjob_name: str,
    created: bool,
    rayjob: dict[str, Any] | None,
    ledger: dict[str, Any] | None,
    storage_uri: str | None,
    now: str,
    ledger_problem: tuple[str, str] | None = None,
    ledger_answered: bool = False,
) -> dict[str, Any]:
    """The full status for a started job. `current` is what is stored now (times and history are kept).

    `ledger` is the latest projection read (None: none read yet, and the last one written stays); `ledger_problem`
    and `ledger_answered` set the LedgerReadable condition (see `ledger_condition`)."""
    current = current or {}
    conds = conditions_for(state, created=created, created_message=f"RayJob {rayjob_name} created")
    readable = ledger_condition(current, problem=ledger_problem, answered=ledger_answered)
    shown = ledger or projection.last(current)
    conds += [c for c in (readable, findings.degraded_condition(shown)) if c is not None]
    phase = phase_of(conds)
    # reason/message mirror the latest transition: they change only when the phase or its reason does, so a
    # refusal recorded between transitions (an immutable field) stays visible until the next one.
    moved = current.get("phase") != phase or _primary_reason(current) != state.reason
    return dump(TransferJobStatus(
        observed_generation=generation,
        conditions=stamp(conds, current.get("conditions") or [], now=now, generation=generation),
        phase=phase,
        ray_job_name=rayjob_name,
        storage_uri=storage_uri,
        logs_uri=joblogs.logs_uri(storage_uri) if storage_uri else None,
        **projection.fields(ledger or projection.last(current) or projection.planned(spec), current),
        **_kuberay_fields(state, current, rayjob, now),
        reason=state.reason if moved else current.get("reason"),
        message=state.message if moved else current.get("message"),
    ))


def refresh_ledger(
    current: dict[str, Any],
    *,
    ledger: dict[str, Any] | None,
    problem: tuple[str, str] | None,
    answered: bool,
    generation: int | None,
    now: str,
) -> dict[str, Any]:
    """A finished job's status once its ledger is read after all (or still is not): the ledger part and the
    LedgerReadable condition change; the phase, the other conditions and reason/message stay as written."""
    new = {**current, "observedGeneration": generation}
    if answered and ledger is not None:
        new |= dump(TransferJobStatus(**projection.fields(ledger, current)))
    old = current.get("conditions") or []
    conds = [c for c in old if c.get("type") not in (LEDGER_CONDITION, C.DEGRADED)]
    readable = ledger_condition(current, problem=problem, answered=answered)
    extra = [c for c in (readable, findings.degraded_condition(new)) if c is not None]
    if extra:
        conds += dump(TransferJobStatus(conditions=stamp(extra, old, now=now, generation=generation)))["conditions"]
    new["conditions"] = conds
    return new


def _primary_reason(status: dict[str, Any]) -> str | None:
    """The reason of the condition that decides the phase (what `State.reason` was when it was written)."""
    phase = status.get("phase")
    c = condition(status, phase if phase in (Phase.FAILED, Phase.SUCCEEDED, Phase.SUSPENDED) else C.RUNNING)
    return c.get("reason") if c else None


def invalid_status(*, message: str, generation: int | None, current: dict[str, Any] | None, now: str) -> dict:
    """The status of a spec that can never run: Failed/InvalidSpec, nothing created."""
    state = State(Phase.FAILED, Reason.INVALID_SPEC, message)
    conds = conditions_for(state, created=False, created_message="")
    return dump(TransferJobStatus(
        observed_generation=generation,
        conditions=stamp(conds, (current or {}).get("conditions") or [], now=now, generation=generation),
        phase=Phase.FAILED,
        reason=Reason.INVALID_SPEC,
        message=message,
        completion_time=(current or {}).get("completionTime") or now,
    ))


def status_patch(current: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """The merge patch from `current` to `new` (None deletes a key); empty when nothing changed."""
    current = current or {}
    patch: dict[str, Any] = {}
    for key, value in new.items():
        if current.get(key) != value:
            patch[key] = value
    return patch


#: What the status copies from the RayJob's status as KubeRay wrote it: KubeRay's bookkeeping, not the job's state.
KUBERAY_FIELDS = ("jobDeploymentStatus", "jobStatus", "startTime", "dashboardURL")


def kuberay_step_only(current: dict[str, Any], new: dict[str, Any]) -> bool:
    """KubeRay's own step while its cluster starts (New -> Initializing, which sets its jobStatus and startTime) is
    all that changed: the phase, the reason and the conditions already say that the cluster is starting. Such a
    step is not written alone; the job's next write carries it. (It is one write per job whenever KubeRay writes its
    first status after the job's first write: a KubeRay working through a burst with one reconcile at a time.)"""
    if any((st.get("jobDeploymentStatus") or "") not in STARTING for st in (current, new)):
        return False
    changed = status_patch(current, new)
    return bool(changed) and set(changed) <= set(KUBERAY_FIELDS)


def transition(current: dict[str, Any] | None, new: dict[str, Any]) -> tuple[str, str, str] | None:
    """(event type, reason, message) when the status moves to a new phase or reason, else None."""
    current = current or {}
    if current.get("phase") == new.get("phase") and current.get("reason") == new.get("reason"):
        return None
    if not new.get("reason") or new.get("reason") in (Reason.IMMUTABLE_FIELD_CHANGED, Reason.CREATING):
        # A refusal is not a transition (its Warning is posted where it is decided); Creating lasts
        # milliseconds and is followed by the RayJobCreated Event.
        return None
    if current.get("reason") in (None, Reason.CREATING) and new.get("reason") == Reason.CLUSTER_STARTING:
        return None  # the RayJobCreated Event, milliseconds before, says the same (one API request less per job)
    warn = new.get("phase") == Phase.FAILED or new.get("reason") in (*PENDING_PROBLEMS, Reason.RETRYING)
    return ("Warning" if warn else "Normal", new["reason"], new.get("message") or "")
