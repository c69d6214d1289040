"""The mirror loop: one asyncio task that follows every started job (instead of a kopf daemon or timer per job).

Per-object daemons and timers make kopf put a finalizer on every TransferJob and take it off again when they end;
each of those writes races the status writes (409s and retries), and a finalizer would block deleting a job while
the operator is down. Here the TransferJob watch feeds the latest body in, RayJob events wake a job at once, and a
job is looked at again when its `follow.follow_once` says.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from graft.operator import follow, metrics, status
from graft.operator.follow import IDLE_SECONDS, POLL_SECONDS, Follower
from graft.operator.memory import Memory, log_ref, started

log = logging.getLogger("graft.operator")

#: New jobs first: while the watch has shown many jobs whose RayJob is not created yet, a due look at a started job
#: waits, this long at most. In a burst the creates then drain before the status writes they would queue behind (and
#: those writes' watch echoes), and a deferred look often finds two changes for one write.
CREATES_FIRST_SECONDS = 0.5
#: ... while this many are: a short backlog drains in moments, and holding every started job's transitions for it cost
#: more than it saved (200-job burst: status p99 0.43-0.65 s without the hold, 0.78-1.68 s with it; bench/RESULTS.md).
CREATES_FIRST_BACKLOG = 100
#: A job seen but not created for this long (its create keeps failing, or kopf will not run it) holds nothing back.
CREATE_BACKLOG_SECONDS = 10.0


class Supervisor:
    def __init__(self, mem: Memory, concurrency: int = 32) -> None:
        self.mem = mem
        self.bodies: dict[str, dict[str, Any]] = {}
        self.followers: dict[str, Follower] = {}
        self.due: dict[str, float] = {}
        self.busy: set[str] = set()
        self.creating: dict[str, float] = {}  # uid -> when the watch first showed it, not created yet
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
        current = self.mem.known_status(body)
        if not started(current):
            if uid not in self.bodies and current.get("reason") != "InvalidSpec" and not status.is_terminal(current):
                self.creating.setdefault(uid, asyncio.get_running_loop().time())
            return
        new = uid not in self.bodies
        self.bodies[uid] = body
        if new:
            self.follower(uid)
            self.kick(uid)

    def relisted(self, uid: str) -> None:
        """The watch listed a followed job again: it had been lost, and kopf's index of RayJobs may keep one that was
        deleted meanwhile (kopf does not compare a new listing with its index). Its next look asks the API server."""
        follower = self.followers.get(uid)
        if follower is not None and uid in self.bodies:
            follower.verify = True
            self.kick(uid)

    def follow_new(self, body: dict[str, Any], rayjob: dict[str, Any]) -> None:
        """A job whose RayJob was just created, followed before its status names the RayJob: looked at now, and its
        first status written once KubeRay has written the RayJob's (`follow.FIRST_STATUS_WAIT` at most)."""
        self.ensure_running()
        uid = body["metadata"]["uid"]
        self.bodies[uid] = body
        follower = self.follower(uid)
        follower.written_rayjob = rayjob
        follower.unrun = True
        follower.first_write_by = asyncio.get_running_loop().time() + follow.FIRST_STATUS_WAIT
        self.kick(uid)

    def created(self, uid: str) -> None:
        """The create handler is done with a job (created, adopted, refused or failed): it holds nothing back."""
        backlog = len(self.creating)
        if self.creating.pop(uid, None) is not None and backlog == CREATES_FIRST_BACKLOG and self._changed is not None:
            self._changed.set()  # the backlog just became short: held looks go now

    def _creates_pending(self, t: float) -> bool:
        for uid in [u for u, since in self.creating.items() if t - since >= CREATE_BACKLOG_SECONDS]:
            del self.creating[uid]
        return len(self.creating) >= CREATES_FIRST_BACKLOG

    def follower(self, uid: str) -> Follower:
        """The job's follower (made on first use: the create handler's first look may come before the loop's)."""
        return self.followers.setdefault(uid, Follower())

    def ensure_running(self) -> None:
        """Start the loop, from inside a kopf handler: its tasks inherit the context kopf posts Events from."""
        if self._task is None or self._task.done():
            self._changed = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="graft-supervisor")

    def kick(self, uid: str) -> None:
        """Look at a job now (its RayJob, its spec or its ledger read changed)."""
        if uid in self.bodies:
            self.due[uid] = asyncio.get_running_loop().time()  # due now (a wait while creates pend counts from now)
            if self._changed is not None:
                self._changed.set()

    def drop(self, uid: str) -> None:
        self.creating.pop(uid, None)
        self.bodies.pop(uid, None)
        self.followers.pop(uid, None)
        self.due.pop(uid, None)

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._inflight) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        assert self._changed is not None
        loop = asyncio.get_running_loop()
        limit = asyncio.Semaphore(self.concurrency)
        while True:
            self._changed.clear()
            t = loop.time()
            # Looks due for less than CREATES_FIRST_SECONDS wait while new jobs are being created.
            hold = t - CREATES_FIRST_SECONDS if self._creates_pending(t) else t
            for uid in [u for u, when in self.due.items() if when <= hold and u not in self.busy]:
                self.busy.add(uid)
                self.due[uid] = float("inf")
                task = loop.create_task(self._one(uid, limit))
                self._inflight.add(task)  # the loop keeps only weak references to tasks
                task.add_done_callback(self._inflight.discard)
            upcoming = min(self.due.values(), default=t + IDLE_SECONDS) + (t - hold)
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
                delay = await follow.follow_once(self.mem, body, follower)
        except Exception:  # one job's surprise must not stop the loop for all of them
            body = self.bodies.get(uid)
            log.exception("following the job failed", extra=log_ref(body) if body else {})
            metrics.RECONCILE_ERRORS.labels(handler="mirror").inc()
        finally:
            self.busy.discard(uid)
            if uid in self.bodies:
                if delay is None:
                    if self.due.get(uid) == float("inf"):  # not woken meanwhile: done with it
                        self.drop(uid)
                    else:
                        self.due[uid] = asyncio.get_running_loop().time()
                else:
                    t = asyncio.get_running_loop().time()
                    self.due[uid] = min(self.due.get(uid, float("inf")), t + delay)
            assert self._changed is not None
            self._changed.set()
