"""What the operator does for one TransferJob: start it, follow it, apply run-policy changes, clean up after it.

The kopf decorators live in `handlers.py`; this module holds the steps they call and the operator's
in-memory view (latest status written per job, RayJobs seen by the watch, a wake-up event per job).
Status is written only here (`write_status`), only when it changed, with an Event at each transition.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import math
from datetime import UTC, datetime
from typing import Any

import kopf
from graft.operator import builder, client, ledgers, metrics, pending, status

from graft.api.models import API_VERSION, GROUP, KIND, PLURAL, VERSION, TransferJobSpec
from graft.ledger import now

log = logging.getLogger("graft.operator")

POLL_SECONDS = 3.0  # ledger polling while a job runs (or its reads fail): progress follows within ~POLL_SECONDS
IDLE_SECONDS = 30.0  # re-check while nothing should change (RayJob events wake a job earlier)
PENDING_CHECK_SECONDS = 10.0  # how often a job that is not starting looks at its pods and Events

# uid -> the TransferJob status as last written (or first seen); the watch can lag behind our own writes.
_status: dict[str, dict[str, Any]] = {}
# (namespace, RayJob name) -> the RayJob body as last seen by the watch.
_rayjobs: dict[tuple[str, str], dict[str, Any]] = {}
_locks: dict[str, asyncio.Lock] = {}


def wake(uid: str) -> None:
    """Make the mirror loop look at a job now (its RayJob or its spec changed)."""
    SUPERVISOR.kick(uid)


def forget(uid: str, namespace: str, name: str) -> None:
    """Drop what the operator remembers of a deleted job."""
    _status.pop(uid, None)
    _locks.pop(uid, None)
    SUPERVISOR.drop(uid)
    metrics.set_phase(namespace, name, None)


def known_status(uid: str, body: Any) -> dict[str, Any]:
    """The job's status: what this process wrote last, else what the API server sent."""
    if uid in _status:
        return _status[uid]
    return copy.deepcopy(dict(body.get("status") or {}))


def started(current: dict[str, Any]) -> bool:
    """A RayJob name is recorded (and so a RayJob exists or is about to) and the spec was not refused."""
    return bool(current.get("rayJobName")) and current.get("reason") != "InvalidSpec"


def _ref(body: Any) -> tuple[str, str, str]:
    meta = body["metadata"]
    return meta["uid"], meta.get("namespace") or "", meta["name"]


def _log_ref(body: Any) -> dict[str, Any]:
    """`extra` for a log line about a job: kopf's JSON formatter puts it under "object", like its own lines."""
    meta = body["metadata"]
    ref = {"apiVersion": API_VERSION, "kind": KIND, "name": meta.get("name"), "uid": meta.get("uid"),
           "namespace": meta.get("namespace")}
    return {"k8s_ref": ref}


def _event(body: Any, type_: str, reason: str, message: str) -> None:
    # kopf.event (not kopf.info) so that posting.level can silence kopf's own per-handler chatter.
    kopf.event(body, type=type_, reason=reason, message=message[:1000])


async def write_status(body: Any, new: dict[str, Any]) -> dict[str, Any]:
    """Patch the status with what changed (nothing when nothing did) and post an Event on a transition."""
    uid, namespace, name = _ref(body)
    lock = _locks.setdefault(uid, asyncio.Lock())
    async with lock:
        current = known_status(uid, body)
        patch = status.status_patch(current, new)
        if not patch:
            return current
        url = client.path(GROUP, VERSION, PLURAL, namespace, name, "status")
        response = await client.merge_patch(url, {"status": patch})
        if response is None:  # deleted meanwhile
            return current
        merged = {k: v for k, v in {**current, **patch}.items() if v is not None}
        _status[uid] = response.get("status") or merged
        metrics.STATUS_WRITES.inc()
        metrics.set_phase(namespace, name, _status[uid].get("phase"))
        moved = status.transition(current, new)
        if moved:
            _event(body, *moved)
        return _status[uid]


def _problems_text(problems: list[Any]) -> str:
    return "; ".join(str(p) for p in problems)


async def _create_or_adopt(obj: dict[str, Any], owner_uid: str) -> tuple[dict[str, Any], bool]:
    """Create a child; when one of that name exists (409), adopt it. Returns (object, created)."""
    group, _, version = obj["apiVersion"].rpartition("/")
    plural = {"RayJob": "rayjobs", "ConfigMap": "configmaps"}[obj["kind"]]
    namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    try:
        return await client.create(client.path(group, version, plural, namespace), obj), True
    except client.Conflict:
        pass
    url = client.path(group, version, plural, namespace, name)
    existing = await client.get(url)
    if existing is None:
        raise kopf.TemporaryError(f"{obj['kind']} {name} was being deleted while it was created; retrying", delay=2)
    refs = existing.get("metadata", {}).get("ownerReferences") or []
    if any(r.get("uid") == owner_uid for r in refs):
        return existing, False
    if any(r.get("controller") for r in refs):
        raise kopf.PermanentError(f"{obj['kind']} {namespace}/{name} exists and belongs to another controller")
    # An orphan of this job's deterministic name (e.g. created before an operator crash lost track): adopt it.
    patched = await client.merge_patch(
        url,
        {"metadata": {"ownerReferences": refs + obj["metadata"]["ownerReferences"],
                      "labels": obj["metadata"]["labels"]}},
    )
    return patched or existing, False


async def rayjob_of(namespace: str, name: str) -> dict[str, Any] | None:
    """The RayJob as the watch last saw it, else as the API server has it (None when there is none)."""
    seen = _rayjobs.get((namespace, name))
    if seen is not None:
        return seen
    found = await client.get(client.path("ray.io", "v1", "rayjobs", namespace, name))
    if found is not None:
        _rayjobs[(namespace, name)] = found
    return found


def remember_rayjob(event_type: str | None, obj: dict[str, Any]) -> str | None:
    """Keep the watch's view of a RayJob; returns the owning TransferJob's uid."""
    meta = obj.get("metadata") or {}
    key = (meta.get("namespace") or "", meta.get("name") or "")
    if event_type == "DELETED":
        _rayjobs.pop(key, None)
    else:
        _rayjobs[key] = copy.deepcopy(obj)
    return next((r.get("uid") for r in meta.get("ownerReferences") or [] if r.get("kind") == KIND), None)


# ------------------------------------------------------------------------------------------- start


async def start(body: Any, logger: logging.Logger | logging.LoggerAdapter) -> None:
    """Validate, record the RayJob's name in status, then create (or adopt) the ConfigMap and the RayJob.

    Run on create, on resume (operator restart) and when a not-yet-started job's spec changes."""
    uid, namespace, name = _ref(body)
    generation = body["metadata"].get("generation")
    current = known_status(uid, body)
    spec, problems = builder.validate_for_cluster(copy.deepcopy(dict(body.get("spec") or {})))
    if spec is None:
        message = _problems_text(problems)
        if started(current):
            # The spec changed after the RayJob was made from it; that one runs on (see spec_changed).
            logger.warning(f"spec is no longer valid; the running job keeps its original spec: {message}")
            return
        await write_status(body, status.invalid_status(message=message, generation=generation, current=current,
                                                       now=now()))
        # Handled, not raised: the status and its Warning event are the verdict. A PermanentError would log the
        # user's mistake as an operator ERROR ("failed permanently"); the next spec change runs this again.
        logger.info(f"invalid spec: {message}")
        return
    if started(current) and status.is_terminal(current):
        return  # a finished job (resumed after a restart): nothing to create again
    rj_name = current.get("rayJobName") if started(current) else builder.rayjob_name(name, uid)
    root = ledgers.storage_root(spec, uid)
    if not started(current) or current.get("rayJobName") != rj_name:
        # Recorded before anything is created: a crash after this line can only ever adopt this name.
        creating = status.build_status(
            spec=spec, generation=generation, current=current,
            state=status.State("Pending", "Creating", f"creating RayJob {rj_name}"),
            rayjob_name=rj_name, created=False, rayjob=None, ledger=None, storage_uri=root, now=now(),
        )
        current = await write_status(body, creating)
        for warning in builder.cluster_warnings(spec):
            _event(body, "Warning", "StorageNotShared", str(warning))
    configmap, rayjob = builder.build_children(body, spec)
    await _create_or_adopt(configmap, uid)
    obj, created = await _create_or_adopt(rayjob, uid)
    _rayjobs.setdefault((namespace, rj_name), obj)
    if created:
        _event(body, "Normal", "RayJobCreated", f"created RayJob {rj_name} and ConfigMap {rj_name}")
        logger.info(f"created RayJob {rj_name}")
    else:
        logger.info(f"adopted existing RayJob {rj_name}")
    await sync(body, spec)
    SUPERVISOR.observe(copy.deepcopy(dict(body)))


# -------------------------------------------------------------------------------------- spec change


async def spec_changed(body: Any, diff: Any, logger: logging.Logger | logging.LoggerAdapter) -> None:
    """Apply run-policy changes to the RayJob; refuse changes to anything else once the job has started."""
    uid, namespace, _ = _ref(body)
    current = known_status(uid, body)
    if not started(current):
        await start(body, logger)
        return
    paths = [tuple(d[1]) for d in diff]
    immutable = sorted({".".join(("spec", *p)) if p else "spec" for p in paths if not p or p[0] != "runPolicy"})
    spec, problems = builder.validate_for_cluster(copy.deepcopy(dict(body.get("spec") or {})))
    override = None
    if immutable:
        message = (
            f"{', '.join(immutable)} cannot change after the job started; the change is ignored and the job runs "
            "on as it started. To run the new spec, create a new TransferJob (or delete and re-create this one)."
        )
        _event(body, "Warning", "ImmutableFieldChanged", message)
        logger.info(message)  # info: kopf posts warnings as Events, and this one has its own
        override = ("ImmutableFieldChanged", message)
    if spec is None:
        logger.warning(f"spec change not applied, it is invalid: {_problems_text(problems)}")
        return
    if any(p and p[0] == "runPolicy" for p in paths) and not status.is_terminal(current):
        rj_name = current["rayJobName"]
        patched = await client.merge_patch(
            client.path("ray.io", "v1", "rayjobs", namespace, rj_name), builder.runpolicy_patch(spec)
        )
        if patched is not None:
            _rayjobs[(namespace, rj_name)] = patched
            logger.info(f"run policy applied to RayJob {rj_name}: {builder.runpolicy_patch(spec)['spec']}")
    await sync(body, spec, override=override)
    wake(uid)


# --------------------------------------------------------------------------------------- following


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


def _read_ledger(body: Any, spec: TransferJobSpec, follower: Follower, jds: str, t: float) -> None:
    """Start a ledger read when one is due: at each new RayJob state, and every POLL_SECONDS while the job runs or
    its reads fail. Never waits: the outcome arrives in `_answered`, which wakes the job."""
    due = jds != follower.asked_jds or (
        t - follower.asked_at >= POLL_SECONDS and (jds == "Running" or follower.failing_since is not None)
    )
    if not due:
        return
    uid, namespace, _ = _ref(body)
    if SUPERVISOR.reads.start(uid, namespace, spec, functools.partial(_answered, body, follower, jds, t)):
        follower.asked_jds, follower.asked_at = jds, t


def _answered(body: Any, follower: Follower, jds: str, asked_at: float, outcome: ledgers.Outcome) -> None:
    """A ledger read's outcome: remember it and look at the job again."""
    if outcome.problem is None:
        if outcome.ledger is not None:
            follower.ledger = outcome.ledger
        follower.answered_jds = jds
        # An answer after the deadline brings the progress up to date but does not clear the problem: a store that
        # is always a little slower than the deadline would otherwise flip the condition at every read.
        if not outcome.late:
            if follower.failing_since is not None:
                log.info("the ledger answered again", extra=_log_ref(body))
            follower.failing_since = follower.problem = None
    elif not outcome.late:  # a hung read that ends in an error after its deadline tells nothing new
        metrics.RECONCILE_ERRORS.labels(handler="ledger").inc()
        if outcome.problem != follower.problem:
            log.warning(f"cannot read the ledger: {outcome.problem[1]}", extra=_log_ref(body))
        follower.problem = outcome.problem
        if follower.failing_since is None:
            follower.failing_since = asked_at
    wake(body["metadata"]["uid"])


def final_read_missing(current: dict[str, Any]) -> bool:
    """A finished job whose ledger could not be read after it finished (its stage results may be stale)."""
    return (status.condition(current, status.LEDGER_CONDITION) or {}).get("status") == "False"


async def sync(
    body: Any,
    spec: TransferJobSpec,
    follower: Follower | None = None,
    *,
    override: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Observe the RayJob (and, while it starts, its pods), start a ledger read when one is due, and write the
    status if it changed. Never waits for storage: the status carries the latest ledger read that has answered."""
    uid, namespace, name = _ref(body)
    follower = follower or SUPERVISOR.follower(uid)
    current = known_status(uid, body)
    rj_name = current.get("rayJobName") or builder.rayjob_name(name, uid)
    generation = body["metadata"].get("generation")
    t = asyncio.get_running_loop().time()
    deadline = SUPERVISOR.reads.timeout
    if status.is_terminal(current):
        new = {**current, "observedGeneration": generation}
        if final_read_missing(current):
            finished_jds = current.get("jobDeploymentStatus") or ""
            _read_ledger(body, spec, follower, finished_jds, t)
            # Only a read started after the finish is the final word; once one has answered (in time or not), the
            # results are in and there is nothing more to read.
            final = follower.answered_jds == finished_jds
            new = status.refresh_ledger(
                new, ledger=follower.ledger, problem=None if final else follower.shown_problem(t, deadline),
                answered=final, generation=generation, now=now(),
            )
        if override:
            new["reason"], new["message"] = override
        return await write_status(body, new)
    rayjob = await rayjob_of(namespace, rj_name)
    deleting = bool(body["metadata"].get("deletionTimestamp"))  # foreground deletion removes children first
    if rayjob is None and not deleting and (status.condition(current, "Created") or {}).get("status") == "True":
        # Deleted under a running job (by hand, or by a cleanup that got it wrong): make it again; the trainer
        # resumes from the ledger, as after a retry.
        rayjob = await _recreate(body, spec, rj_name)
    created = rayjob is not None
    rj_status = (rayjob or {}).get("status") or {}
    jds = rj_status.get("jobDeploymentStatus") or ""
    _read_ledger(body, spec, follower, jds, t)
    problem = follower.shown_problem(t, deadline)
    ledger = follower.ledger
    state = status.derive_state(spec=spec, rayjob=rayjob, ledger=ledger)
    if state.phase in status.TERMINAL:
        follower.finished_at = follower.finished_at or t
        if follower.answered_jds != jds:  # the ledger has not been read since the RayJob finished
            if problem is None and override is None and t - follower.finished_at < deadline:
                # Its final read is on its way (milliseconds when storage answers): a finished job's status is
                # written once, whole, so that what `kubectl wait --for=condition=Succeeded` returns to already
                # has the model and the stage results. This is the one wait on storage, bounded by the deadline.
                follower.recheck_at = follower.finished_at + deadline
                return current
            ledger = None  # what was read before it finished is not the final word: claim no stage results
            state = status.derive_state(spec=spec, rayjob=rayjob, ledger=None)
            # Say so, so that the read goes on after the finish (`final_read_missing`) and fills the results in.
            problem = problem or follower.problem or ledgers.timeout_problem(ledgers.ledger_uri(spec, uid), deadline)
    else:
        follower.finished_at = None
    if created and state.phase == "Pending" and state.reason == "ClusterStarting":
        follower.pending_since = follower.pending_since or t
        if t - follower.pending_checked_at >= PENDING_CHECK_SECONDS:
            follower.pending_checked_at = t
            try:
                follower.pending = await pending.reason(namespace, rayjob, spec.run_policy.suspend)
            except client.APIError as exc:
                log.warning(f"cannot inspect pods/events: {exc}", extra=_log_ref(body))
        state = status.derive_state(spec=spec, rayjob=rayjob, ledger=ledger, pending=follower.pending)
    else:
        follower.pending, follower.pending_since, follower.pending_checked_at = None, None, 0.0
    new = status.build_status(
        spec=spec, generation=generation, current=current, state=state, rayjob_name=rj_name, created=created,
        rayjob=rayjob, ledger=ledger, storage_uri=ledgers.storage_root(spec, uid), now=now(),
        ledger_problem=problem, ledger_answered=follower.answering,
    )
    if override:
        new["reason"], new["message"] = override
    return await write_status(body, new)


async def _recreate(body: Any, spec: TransferJobSpec, rj_name: str) -> dict[str, Any]:
    uid, namespace, _ = _ref(body)
    configmap, rayjob = builder.build_children(body, spec)
    await _create_or_adopt(configmap, uid)
    obj, created = await _create_or_adopt(rayjob, uid)
    _rayjobs[(namespace, rj_name)] = obj
    if created:
        _event(body, "Warning", "RayJobRecreated",
               f"RayJob {rj_name} was deleted before the job finished; created it again (it resumes from the ledger)")
    return obj


def _seconds_until(timestamp: str | None, seconds: int) -> float:
    if not timestamp:
        return 0.0
    when = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return when.timestamp() + seconds - datetime.now(UTC).timestamp()


async def expire(body: Any, spec: TransferJobSpec, current: dict[str, Any]) -> float | None:
    """ttlSecondsAfterFinished: delete the RayJob (and so its Ray cluster) of a finished job, keep the job.

    Returns seconds until it is due, or None when there is nothing (more) to do."""
    ttl = spec.run_policy.ttl_seconds_after_finished
    if ttl is None:
        return None
    due = _seconds_until(current.get("completionTime"), ttl)
    if due > 0:
        return due
    _, namespace, _ = _ref(body)
    rj_name = current["rayJobName"]
    if await client.delete(client.path("ray.io", "v1", "rayjobs", namespace, rj_name)):
        _rayjobs.pop((namespace, rj_name), None)
        _event(
            body, "Normal", "RayJobDeleted",
            f"ttlSecondsAfterFinished ({ttl}s) passed: deleted RayJob {rj_name} and its Ray cluster; the "
            "TransferJob, its status and everything in object storage stay",
        )
    return None


async def follow_once(body: Any, follower: Follower) -> float | None:
    """One look at a started job: mirror RayJob status + ledger into its status, TTL clean-up once finished.

    Returns the seconds until it should be looked at again (sooner if woken), None when there is nothing more
    to follow (finished and cleaned up)."""
    with metrics.measured("mirror"):
        spec, problems = builder.validate_for_cluster(copy.deepcopy(dict(body.get("spec") or {})))
        if spec is None:
            log.warning(f"not following, the spec is invalid: {_problems_text(problems)}", extra=_log_ref(body))
            return None
        try:
            current = await sync(body, spec, follower)
            if status.is_terminal(current):
                due = await expire(body, spec, current)
                if final_read_missing(current):  # keep reading until the final stage results are in
                    due = POLL_SECONDS if due is None else min(due, POLL_SECONDS)
                return due
            delay = {"Running": POLL_SECONDS, "Pending": PENDING_CHECK_SECONDS}.get(current.get("phase"), IDLE_SECONDS)
            if follower.recheck_at is not None:  # a finished job waiting for its final ledger read
                delay = min(delay, max(0.0, follower.recheck_at - asyncio.get_running_loop().time()))
                follower.recheck_at = None
            return delay
        except (TimeoutError, client.APIError, OSError) as exc:
            log.warning(f"mirroring failed, retrying in {POLL_SECONDS}s: {exc!r}", extra=_log_ref(body))
            metrics.RECONCILE_ERRORS.labels(handler="mirror").inc()
            return POLL_SECONDS


class Supervisor:
    """One loop for all started jobs (instead of a kopf daemon or timer per job).

    Per-object daemons and timers make kopf put a finalizer on every TransferJob and take it off again when
    they end; each of those writes races the status writes (409s and retries) and a finalizer would block
    deleting a job while the operator is down. Here the TransferJob watch feeds the latest body in, RayJob
    events wake a job at once, and a job is looked at again when its `follow_once` says."""

    def __init__(self, concurrency: int = 32) -> None:
        self.bodies: dict[str, dict[str, Any]] = {}
        self.followers: dict[str, Follower] = {}
        self.reads = ledgers.Reads()
        self.due: dict[str, float] = {}
        self.busy: set[str] = set()
        self.concurrency = concurrency
        self._changed: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._inflight: set[asyncio.Task] = set()

    def observe(self, body: dict[str, Any]) -> None:
        """The latest body of a job (from the watch); started jobs are followed, others ignored."""
        self.ensure_running()
        uid = body["metadata"]["uid"]
        if body["metadata"].get("deletionTimestamp"):
            self.drop(uid)
            return
        if not started(known_status(uid, body)):
            return
        new = uid not in self.bodies
        self.bodies[uid] = body
        if new:
            self.follower(uid)
            self.kick(uid)

    def follower(self, uid: str) -> Follower:
        """The job's follower (made on first use: the create handler's first look may come before the loop's)."""
        return self.followers.setdefault(uid, Follower())

    def configure(self, ledger_timeout: float) -> None:
        """Operator settings (from the startup handler): the ledger read deadline."""
        self.reads.timeout = ledger_timeout

    def ensure_running(self) -> None:
        """Start the loop, from inside a kopf handler: its tasks inherit the context kopf posts Events from."""
        if self._task is None or self._task.done():
            self._changed = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="graft-supervisor")

    def kick(self, uid: str) -> None:
        if uid in self.bodies:
            self.due[uid] = 0.0
            if self._changed is not None:
                self._changed.set()

    def drop(self, uid: str) -> None:
        self.bodies.pop(uid, None)
        self.followers.pop(uid, None)
        self.due.pop(uid, None)

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._inflight) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.reads.close()

    async def _run(self) -> None:
        assert self._changed is not None
        loop = asyncio.get_running_loop()
        limit = asyncio.Semaphore(self.concurrency)
        while True:
            self._changed.clear()
            t = loop.time()
            for uid in [u for u, when in self.due.items() if when <= t and u not in self.busy]:
                self.busy.add(uid)
                self.due[uid] = float("inf")
                task = loop.create_task(self._one(uid, limit))
                self._inflight.add(task)  # the loop keeps only weak references to tasks
                task.add_done_callback(self._inflight.discard)
            upcoming = min(self.due.values(), default=t + IDLE_SECONDS)
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=min(max(0.01, upcoming - t), IDLE_SECONDS))
            except TimeoutError:
                pass

    async def _one(self, uid: str, limit: asyncio.Semaphore) -> None:
        delay: float | None = POLL_SECONDS
        try:
            async with limit:
                body, follower = self.bodies.get(uid), self.followers.get(uid)
                if body is None or follower is None:
                    return
                delay = await follow_once(body, follower)
        except Exception:  # one job's surprise must not stop the loop for all of them
            body = self.bodies.get(uid)
            log.exception("following the job failed", extra=_log_ref(body) if body else {})
            metrics.RECONCILE_ERRORS.labels(handler="mirror").inc()
        finally:
            self.busy.discard(uid)
            if uid in self.bodies:
                if delay is None:
                    if self.due.get(uid) == float("inf"):  # not woken meanwhile: done with it
                        self.drop(uid)
                    else:
                        self.due[uid] = 0.0
                else:
                    t = asyncio.get_running_loop().time()
                    self.due[uid] = min(self.due.get(uid, float("inf")), t + delay)
            assert self._changed is not None
            self._changed.set()


SUPERVISOR = Supervisor()
