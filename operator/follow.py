"""Following a started job: mirror its RayJob's status and its ledger into the TransferJob's status.

`sync` looks once (never waiting on storage: ledger reads run off this path and wake the job when they answer);
`follow_once` is one turn of the mirror loop for a job, TTL clean-up included.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import math
from typing import Any

from graft.operator import builder, children, client, ledgers, metrics, pending, status
from graft.operator.conditions import FINISHED, NOT_YET_RUN
from graft.operator.memory import Memory, finished, log_ref, ref

from graft.api.models import TransferJobSpec
from graft.api.validation import validate_for_cluster
from graft.ledger import now

log = logging.getLogger("graft.operator")

POLL_SECONDS = 3.0  # ledger polling while a job runs (or its reads fail): progress follows within ~POLL_SECONDS
IDLE_SECONDS = 30.0  # re-check while nothing should change (RayJob events wake a job earlier)
PENDING_CHECK_SECONDS = 10.0  # how often a job that is not starting looks at its pods and Events
# KubeRay writes a new RayJob's first status (Initializing, or Suspended) within milliseconds of its creation; the
# job's first status write waits for it, this long at most, so that one write says both "created" and what KubeRay
# made of it (one API request less per job). Without KubeRay's answer it is written anyway when this has passed.
FIRST_STATUS_WAIT = 2.0


class Follower:
    """Per-job memory of the mirror loop: what its ledger reads found, when its pods were last read."""

    def __init__(self) -> None:
        self.ledger: dict[str, Any] | None = None  # the projection the latest answered read found
        self.asked_jds: str | None = "<never>"  # the RayJob's jobDeploymentStatus when the latest read started
        self.asked_at = -math.inf
        self.answered_jds: str | None = None  # ... when the latest read that answered started
        self.failing_since: float | None = None  # when the first read failing since the last answer started
        self.problem: tuple[str, str] | None = None  # (reason, message) of the latest failed read
        self.finished_at: float | None = None  # when the RayJob was first seen finished
        self.recheck_at: float | None = None  # look again by then (a finished job waiting for its final read)
        self.pending: tuple[str, str] | None = None
        self.pending_checked_at = 0.0
        self.pending_since: float | None = None
        self.written_rayjob: dict[str, Any] | None = None  # the RayJob as we last wrote it, until the watch sees it
        self.spec: tuple[Any, TransferJobSpec | None, list[Any]] | None = None  # (generation, spec, problems)
        self.first_write_by: float | None = None  # a new RayJob's job: write its first status by then at the latest
        #: A job whose RayJob this process created and whose trainer has not run yet: it has no ledger to read.
        self.unrun = False
        #: The watch listed the job again (it was lost meanwhile): ask the API server for the RayJob at the next look.
        self.verify = False

    def shown_problem(self, t: float, deadline: float) -> tuple[str, str] | None:
        """The read problem the status shows: once reads have failed for at least the deadline (a timeout has by
        definition), so that one failed read among good ones does not flip the condition back and forth."""
        if self.failing_since is None or t - self.failing_since < deadline:
            return None
        return self.problem

    @property
    def answering(self) -> bool:
        """Reads answer within the deadline (the status's ledger part is as current as the last poll)."""
        return self.failing_since is None and self.answered_jds is not None


def _read_ledger(mem: Memory, body: Any, spec: TransferJobSpec, follower: Follower, jds: str, t: float) -> None:
    """Start a ledger read when one is due: at each new RayJob state, and every POLL_SECONDS while the job runs or
    its reads fail. Never waits: the outcome arrives in `_answered`, which wakes the job.

    A job this process has just created has no ledger until its trainer runs: no read while its RayJob starts
    (two reads per job fewer; an adopted or resumed job is read at once, it may have run before)."""
    if follower.unrun:
        if jds in NOT_YET_RUN:
            return
        follower.unrun = False
    due = jds != follower.asked_jds or (
        t - follower.asked_at >= POLL_SECONDS and (jds == "Running" or follower.failing_since is not None)
    )
    if not due:
        return
    uid, namespace, _ = ref(body)
    # A finished job's read goes before the running jobs' polls: its Succeeded/Failed status waits for it.
    if mem.reads.start(uid, namespace, spec, functools.partial(_answered, mem, body, follower, jds, t),
                       urgent=jds in FINISHED):
        follower.asked_jds, follower.asked_at = jds, t


def _answered(mem: Memory, body: Any, follower: Follower, jds: str, asked_at: float, outcome: ledgers.Outcome
              ) -> None:
    """A ledger read's outcome: remember it and look at the job again."""
    if outcome.problem is None:
        if outcome.ledger is not None:
            follower.ledger = outcome.ledger
        follower.answered_jds = jds
        # An answer after the deadline brings the progress up to date but does not clear the problem: a store that
        # is always a little slower than the deadline would otherwise flip the condition at every read.
        if not outcome.late:
            if follower.failing_since is not None:
                log.info("the ledger answered again", extra=log_ref(body))
            follower.failing_since = follower.problem = None
    elif not outcome.late:  # a hung read that ends in an error after its deadline tells nothing new
        metrics.RECONCILE_ERRORS.labels(handler="ledger").inc()
        if outcome.problem != follower.problem:
            log.warning(f"cannot read the ledger: {outcome.problem[1]}", extra=log_ref(body))
        follower.problem = outcome.problem
        if follower.failing_since is None:
            follower.failing_since = asked_at
    if mem.supervisor is not None:
        mem.supervisor.kick(body["metadata"]["uid"])


def final_read_missing(current: dict[str, Any]) -> bool:
    """A finished job whose ledger could not be read after it finished (its stage results may be stale)."""
    return (status.condition(current, status.LEDGER_CONDITION) or {}).get("status") == "False"


def _finished(mem: Memory, body: Any, spec: TransferJobSpec, follower: Follower, current: dict[str, Any],
              t: float) -> dict[str, Any]:
    """The status of a job already written as finished: only a missing final ledger read can still change it."""
    generation = body["metadata"].get("generation")
    new = {**current, "observedGeneration": generation}
    if final_read_missing(current):
        finished_jds = current.get("jobDeploymentStatus") or ""
        _read_ledger(mem, body, spec, follower, finished_jds, t)
        # Only a read started after the finish is the final word; once one has answered (in time or not), the
        # results are in and there is nothing more to read.
        final = follower.answered_jds == finished_jds
        new = status.refresh_ledger(
            new, ledger=follower.ledger, problem=None if final else follower.shown_problem(t, mem.reads.timeout),
            answered=final, generation=generation, now=now(),
        )
    return new


async def sync(mem: Memory, body: Any, spec: TransferJobSpec, follower: Follower, *,
               override: tuple[str, str] | None = None, rayjob: dict[str, Any] | None = None) -> dict[str, Any]:
    """Observe the RayJob (and, while it starts, its pods), start a ledger read when one is due, and write the
    status if it changed. Never waits for storage: the status carries the latest ledger read that has answered.
    `rayjob` is the RayJob when the caller has just written it (the watch may not have seen it yet)."""
    uid, namespace, name = ref(body)
    current = mem.known_status(body)
    t = asyncio.get_running_loop().time()
    if finished(current):  # not a refusal of an earlier generation: that job starts with its fixed spec (issue 24)
        new = _finished(mem, body, spec, follower, current, t)
        if override:
            new["reason"], new["message"] = override
        return await mem.write_status(body, new)
    rj_name = current.get("rayJobName") or builder.rayjob_name(name, uid)
    if rayjob is not None:
        follower.written_rayjob = rayjob
    rayjob = children.rayjob_seen(mem, follower, namespace, rj_name)
    if follower.verify:  # kopf's index may still hold a RayJob deleted while the watch was lost
        follower.verify = False
        rayjob = await children.checked(mem, rayjob, namespace, rj_name)
    rayjob = rayjob or await mem.api.get("RayJob", rj_name, namespace)
    deleting = bool(body["metadata"].get("deletionTimestamp"))  # foreground deletion removes children first
    if rayjob is None and not deleting and (status.condition(current, "Created") or {}).get("status") == "True":
        # Deleted under a running job (by hand, or by a cleanup that got it wrong): make it again; the trainer
        # resumes from the ledger, as after a retry.
        rayjob = follower.written_rayjob = await children.recreate(mem, body, spec, rj_name)
    jds = ((rayjob or {}).get("status") or {}).get("jobDeploymentStatus") or ""
    if follower.first_write_by is not None:
        if rayjob is not None and not jds and not current.get("rayJobName") and t < follower.first_write_by:
            follower.recheck_at = follower.first_write_by  # KubeRay's first status will wake it sooner
            return current
        follower.first_write_by = None
    _read_ledger(mem, body, spec, follower, jds, t)
    deadline = mem.reads.timeout
    problem, ledger = follower.shown_problem(t, deadline), follower.ledger
    state = status.derive_state(spec=spec, rayjob=rayjob, ledger=ledger)
    if state.phase in status.TERMINAL:
        follower.finished_at = follower.finished_at or t
        if follower.answered_jds != jds:  # the ledger has not been read since the RayJob finished
            queued = mem.reads.queued(uid)
            if problem is None and override is None and (t - follower.finished_at < deadline or queued):
                # Its final read is on its way (milliseconds when storage answers): a finished job's status is
                # written once, whole, so that what `kubectl wait --for=condition=Succeeded` returns to already
                # has the model and the stage results. This is the one wait on storage, bounded by the deadline
                # once the read is reading; while it waits its turn behind other jobs' reads at an endpoint that
                # answers, the backlog is the operator's own and is not reported as storage trouble (the read's
                # answer, or the endpoint's silence for a deadline, wakes the job).
                follower.recheck_at = (t if queued else follower.finished_at) + deadline
                return current
            ledger = None  # what was read before it finished is not the final word: claim no stage results
            state = status.derive_state(spec=spec, rayjob=rayjob, ledger=None)
            # Say so, so that the read goes on after the finish (`final_read_missing`) and fills the results in.
            problem = problem or follower.problem or ledgers.timeout_problem(ledgers.ledger_uri(spec, uid), deadline)
    else:
        follower.finished_at = None
    if rayjob is not None and state.phase == "Pending" and state.reason == "ClusterStarting":
        follower.pending_since = follower.pending_since or t
        # A cluster's first seconds of starting are no problem (its pods may not even exist): look once it has been
        # starting for PENDING_CHECK_SECONDS, then as often.
        if t - max(follower.pending_checked_at, follower.pending_since) >= PENDING_CHECK_SECONDS:
            follower.pending_checked_at = t
            try:
                follower.pending = await pending.reason(mem.api, namespace, rayjob)
            except client.Errors as exc:
                log.warning(f"cannot inspect pods/events: {exc}", extra=log_ref(body))
        state = status.derive_state(spec=spec, rayjob=rayjob, ledger=ledger, pending=follower.pending)
    else:
        follower.pending, follower.pending_since, follower.pending_checked_at = None, None, 0.0
    new = status.build_status(
        spec=spec, generation=body["metadata"].get("generation"), current=current, state=state, rayjob_name=rj_name,
        created=rayjob is not None, rayjob=rayjob, ledger=ledger, storage_uri=ledgers.storage_root(spec, uid),
        now=now(), ledger_problem=problem, ledger_answered=follower.answering,
    )
    if override:
        new["reason"], new["message"] = override
    elif status.kuberay_step_only(current, new):
        return current
    return await mem.write_status(body, new)


async def follow_once(mem: Memory, body: Any, follower: Follower) -> float | None:
    """One look at a started job: mirror RayJob status + ledger into its status, TTL clean-up once finished.

    Returns the seconds until it should be looked at again (sooner if woken), None when there is nothing more
    to follow (finished and cleaned up)."""
    with metrics.measured("mirror"):
        generation = body["metadata"].get("generation")
        if follower.spec is None or follower.spec[0] != generation:  # validated once per spec change, not per look
            follower.spec = generation, *validate_for_cluster(copy.deepcopy(dict(body.get("spec") or {})))
        _, spec, problems = follower.spec
        if spec is None:
            log.warning(f"not following, the spec is invalid: {'; '.join(map(str, problems))}", extra=log_ref(body))
            return None
        try:
            current = await sync(mem, body, spec, follower)
            if finished(current):
                due = await children.expire(mem, body, spec, current)
                if final_read_missing(current):  # keep reading until the final stage results are in
                    due = POLL_SECONDS if due is None else min(due, POLL_SECONDS)
                return due
            delay = {"Running": POLL_SECONDS, "Pending": PENDING_CHECK_SECONDS}.get(current.get("phase"), IDLE_SECONDS)
            if follower.recheck_at is not None:  # a finished job waiting for its final ledger read
                delay = min(delay, max(0.0, follower.recheck_at - asyncio.get_running_loop().time()))
                follower.recheck_at = None
            return delay
        except (TimeoutError, OSError, *client.Errors) as exc:
            log.warning(f"mirroring failed, retrying in {POLL_SECONDS}s: {exc!r}", extra=log_ref(body))
            metrics.RECONCILE_ERRORS.labels(handler="mirror").inc()
            return POLL_SECONDS
