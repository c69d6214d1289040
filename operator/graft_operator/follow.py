"""Following a started job: mirror its RayJob's status and its ledger into the TransferJob's status.

`sync` looks once, KubeRay style: a switch on the job's `Step`, each case a short function that returns the status to
write (None: nothing yet) and when to look again, or the step to go on with in this same look. It never waits on
storage: ledger reads run off this path and wake the job when they answer. `follow_once` is one turn of the mirror
loop for a job, TTL clean-up included.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from graft.api.models import Phase, TransferJobSpec
from graft.ledger import now
from graft_operator import builder, children, client, ledgers, metrics, pending, status
from graft_operator.conditions import FINISHED, ConditionType, Reason
from graft_operator.jobstate import Follower, Step
from graft_operator.memory import Memory, Standing, log_ref, ref

log = logging.getLogger("graft_operator")

POLL_SECONDS = 3.0  # ledger polling while a job runs (or its reads fail): progress follows within ~POLL_SECONDS
IDLE_SECONDS = 30.0  # re-check while nothing should change (RayJob events wake a job earlier)
PENDING_CHECK_SECONDS = 10.0  # how often a job that is not starting looks at its pods and Events
# KubeRay writes a new RayJob's first status (Initializing, or Suspended) within milliseconds of its creation; the
# job's first status write waits for it, this long at most, so that one write says both "created" and what KubeRay
# made of it (one API request less per job). Without KubeRay's answer it is written anyway when this has passed.
FIRST_STATUS_WAIT = 2.0

#: What a step decides: the status to write (None: nothing now) and the most seconds until the next look (None: as
#: the written phase says); or the step this look goes on with.
Decision = tuple[dict[str, Any] | None, float | None] | Step


@dataclass
class Look:
    """One look at a job: what it is given and what it observed."""

    mem: Memory
    body: Any
    spec: TransferJobSpec
    follower: Follower
    current: dict[str, Any]
    t: float
    override: tuple[str, str] | None
    rayjob: dict[str, Any] | None = None
    rj_name: str = ""

    @property
    def jds(self) -> str:
        return ((self.rayjob or {}).get("status") or {}).get("jobDeploymentStatus") or ""

    def state(self, ledger: dict[str, Any] | None, pending: tuple[str, str] | None = None) -> status.State:
        return status.derive_state(spec=self.spec, rayjob=self.rayjob, ledger=ledger, pending=pending)

    def built(self, state: status.State, ledger: dict[str, Any] | None, problem: tuple[str, str] | None
              ) -> dict[str, Any]:
        uid = self.body["metadata"]["uid"]
        return status.build_status(
            spec=self.spec, generation=self.body["metadata"].get("generation"), current=self.current, state=state,
            rayjob_name=self.rj_name, created=self.rayjob is not None, rayjob=self.rayjob, ledger=ledger,
            storage_uri=ledgers.storage_root(self.spec, uid), now=now(), ledger_problem=problem,
            ledger_answered=self.follower.reads.answering)


def _read_ledger(look: Look, jds: str) -> None:
    """Start a ledger read when one is due (`LedgerView.due`). Never waits: the outcome arrives in `_answered`."""
    reads, t = look.follower.reads, look.t
    if not reads.due(jds, t, POLL_SECONDS):
        return
    uid, namespace, _ = ref(look.body)
    # A finished job's read goes before the running jobs' polls: its Succeeded/Failed status waits for it.
    if look.mem.reads.start(uid, namespace, look.spec, functools.partial(_answered, look.body, look.follower, jds, t),
                            urgent=jds in FINISHED):
        reads.asked_jds, reads.asked_at = jds, t


def _answered(body: Any, follower: Follower, jds: str, asked_at: float, outcome: ledgers.Outcome) -> None:
    """A ledger read's outcome: remember it and ask for a look at the job."""
    follower.reads.take(body, jds, asked_at, outcome)
    follower.wake()


def final_read_missing(current: dict[str, Any]) -> bool:
    """A finished job whose ledger could not be read after it finished (its stage results may be stale)."""
    return (status.condition(current, status.LEDGER_CONDITION) or {}).get("status") == "False"


async def _first_status(look: Look) -> Decision:
    """Wait (FIRST_STATUS_WAIT at most) for KubeRay's first status of the RayJob created here, so that the job's first
    write says both "created" and what KubeRay made of it."""
    by = look.follower.since + FIRST_STATUS_WAIT
    if look.rayjob is not None and not look.jds and not look.current.get("rayJobName") and look.t < by:
        return None, by - look.t  # KubeRay's first status will wake it sooner
    return Step.FOLLOWING


async def _following(look: Look) -> Decision:
    """Mirror the RayJob and the latest ledger read; a finished RayJob goes on to its final read."""
    follower = look.follower
    _read_ledger(look, look.jds)
    ledger = follower.reads.ledger
    state = look.state(ledger)
    if state.phase in status.TERMINAL:
        follower.since = look.t
        return Step.FINAL_READ
    if look.rayjob is not None and state.phase == Phase.PENDING and state.reason == Reason.CLUSTER_STARTING:
        why = await follower.pending.look(look.mem.api, ref(look.body)[1], look.rayjob, look.t, PENDING_CHECK_SECONDS,
                                          log_ref(look.body))
        state = look.state(ledger, why)
    else:
        follower.pending = pending.PendingCheck()
    return look.built(state, ledger, follower.reads.shown_problem(look.t, look.mem.reads.timeout)), None


async def _final_read(look: Look) -> Decision:
    """The RayJob has finished: write the finished status once, whole, with the ledger read after the finish."""
    follower, deadline = look.follower, look.mem.reads.timeout
    follower.pending = pending.PendingCheck()
    _read_ledger(look, look.jds)
    reads = follower.reads
    state = look.state(reads.ledger)
    if state.phase not in status.TERMINAL:  # KubeRay's word changed (a RayJob made again): follow it
        return Step.FOLLOWING
    problem, ledger = reads.shown_problem(look.t, deadline), reads.ledger
    if reads.answered_jds != look.jds:  # the ledger has not been read since the RayJob finished
        queued = look.mem.reads.queued(ref(look.body)[0])
        if problem is None and look.override is None and (look.t - follower.since < deadline or queued):
            # Its final read is on its way (milliseconds when storage answers): what `kubectl wait
            # --for=condition=Succeeded` returns to then has the model and the stage results. This is the one wait on
            # storage, bounded by the deadline once the read is reading; while it waits its turn behind other jobs'
            # reads at an endpoint that answers, the backlog is the operator's own and is not reported as storage
            # trouble (the read's answer, or the endpoint's silence for a deadline, wakes the job).
            return None, max(0.0, (look.t if queued else follower.since) + deadline - look.t)
        ledger = None  # what was read before it finished is not the final word: claim no stage results
        state = look.state(None)
        # Say so, so that the read goes on after the finish (`final_read_missing`) and fills the results in.
        uri = ledgers.ledger_uri(look.spec, ref(look.body)[0])
        problem = problem or reads.problem or ledgers.timeout_problem(uri, deadline)
    return look.built(state, ledger, problem), None


async def _finished(look: Look) -> Decision:
    """The status says finished: only a missing final ledger read can still change it."""
    generation = look.body["metadata"].get("generation")
    new = {**look.current, "observedGeneration": generation}
    if final_read_missing(look.current):
        finished_jds = look.current.get("jobDeploymentStatus") or ""
        _read_ledger(look, finished_jds)
        reads = look.follower.reads
        # Only a read started after the finish is the final word; once one has answered (in time or not), the
        # results are in and there is nothing more to read.
        final = reads.answered_jds == finished_jds
        new = status.refresh_ledger(
            new, ledger=reads.ledger, problem=None if final else reads.shown_problem(look.t, look.mem.reads.timeout),
            answered=final, generation=generation, now=now())
    return new, None


STEPS: dict[Step, Callable[[Look], Awaitable[Decision]]] = {
    Step.FIRST_STATUS: _first_status, Step.FOLLOWING: _following, Step.FINAL_READ: _final_read,
    Step.FINISHED: _finished,
}


async def _observe(look: Look, written: dict[str, Any] | None) -> None:
    """Find the job's RayJob (`written`: as the caller has just written it; the watch may not have seen it yet), and
    make it again when it was deleted under a running job."""
    mem, follower, (uid, namespace, name) = look.mem, look.follower, ref(look.body)
    look.rj_name = look.current.get("rayJobName") or builder.rayjob_name(name, uid)
    if written is not None:
        follower.written_rayjob = written
    rayjob = children.rayjob_seen(mem, follower, namespace, look.rj_name)
    if follower.verify:  # kopf's index may still hold a RayJob deleted while the watch was lost
        follower.verify = False
        rayjob = await children.checked(mem, rayjob, namespace, look.rj_name)
    rayjob = rayjob or await mem.api.get("RayJob", look.rj_name, namespace)
    deleting = bool(look.body["metadata"].get("deletionTimestamp"))  # foreground deletion removes children first
    created = (status.condition(look.current, ConditionType.CREATED) or {}).get("status") == "True"
    if rayjob is None and not deleting and created:
        # Deleted under a running job (by hand, or by a cleanup that got it wrong): make it again; the trainer
        # resumes from the ledger, as after a retry.
        rayjob = follower.written_rayjob = await children.recreate(mem, look.body, look.spec, look.rj_name)
    look.rayjob = rayjob


async def sync(mem: Memory, body: Any, spec: TransferJobSpec, follower: Follower, *,
               override: tuple[str, str] | None = None, rayjob: dict[str, Any] | None = None
               ) -> tuple[dict[str, Any], float]:
    """One look: observe the RayJob, take the job's step, write the status if it changed. Returns the status and the
    seconds until the next look. `rayjob` is the RayJob when the caller has just written it."""
    current = mem.known_status(body)
    look = Look(mem, body, spec, follower, current, asyncio.get_running_loop().time(), override)
    # Only a started job's Succeeded/Failed is final: a refused spec's Failed/InvalidSpec belongs to the generation
    # that was refused, and the fixed spec starts the job (issue 24).
    if Standing.of(current) is Standing.FINISHED:
        follower.step = Step.FINISHED
    else:
        await _observe(look, rayjob)
    while isinstance(decision := await STEPS[follower.step](look), Step):
        follower.step = decision
    new, wait = decision
    if new is not None and override:
        new["reason"], new["message"] = override
    elif new is None or status.kuberay_step_only(current, new):
        new = current
    written = new if new is current else await mem.write_status(body, new)
    delay = {Phase.RUNNING: POLL_SECONDS, Phase.PENDING: PENDING_CHECK_SECONDS}.get(written.get("phase"), IDLE_SECONDS)
    return written, delay if wait is None else min(delay, wait)


async def follow_once(mem: Memory, body: Any, follower: Follower) -> float | None:
    """One look at a started job: mirror RayJob status + ledger into its status, TTL clean-up once finished.

    Returns the seconds until it should be looked at again (sooner if woken), None when there is nothing more
    to follow (finished and cleaned up)."""
    with metrics.measured("mirror"):
        spec = follower.valid_spec(body)
        if spec is None:
            return None
        try:
            current, delay = await sync(mem, body, spec, follower)
            if Standing.of(current) is not Standing.FINISHED:
                return delay
            due = await children.expire(mem, body, spec, current)
            if final_read_missing(current):  # keep reading until the final stage results are in
                due = POLL_SECONDS if due is None else min(due, POLL_SECONDS)
            return due
        except (TimeoutError, OSError, *client.Errors) as exc:
            log.warning(f"mirroring failed, retrying in {POLL_SECONDS}s: {exc!r}", extra=log_ref(body))
            metrics.RECONCILE_ERRORS.labels(handler="mirror").inc()
            return POLL_SECONDS
