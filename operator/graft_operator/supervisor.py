"""The mirror loop: one asyncio task that follows every started job (instead of a kopf daemon or timer per job).

Per-object daemons and timers make kopf put a finalizer on every TransferJob and take it off again when they end;
each of those writes races the status writes (409s and retries), and a finalizer would block deleting a job while
the operator is down. Here the TransferJob watch feeds the latest body in, RayJob events wake a job at once, and a
job is looked at again when its `follow.follow_once` says.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from graft_operator import follow, metrics
from graft_operator.follow import IDLE_SECONDS, POLL_SECONDS, Follower
from graft_operator.memory import Memory, Standing, log_ref
from graft_operator.workqueue import DelayedQueue

log = logging.getLogger("graft_operator")

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
    """Which jobs are followed (the watch's latest body of each, and its `Follower`), and which are still being
    created; when each is looked at is the `workqueue.DelayedQueue`'s business."""

    def __init__(self, mem: Memory, concurrency: int = 32) -> None:
        self.mem = mem
        self.bodies: dict[str, dict[str, Any]] = {}
        self.followers: dict[str, Follower] = {}
        self.creating: dict[str, float] = {}  # uid -> when the watch first showed it, not created yet
        self.queue = DelayedQueue(self._look, self.drop, concurrency=concurrency, idle=IDLE_SECONDS,
                                  holdback=self._holdback)

    def observe(self, body: dict[str, Any]) -> None:
        """The latest body of a job (from the watch); started jobs are followed, others ignored."""
        self.ensure_running()
        uid = body["metadata"]["uid"]
        if body["metadata"].get("deletionTimestamp"):
            self.drop(uid)
            return
        standing = Standing.of(self.mem.known_status(body))
        if not standing.started:
            if uid not in self.bodies and standing is Standing.NEW:
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
        self.follower(uid).created(rayjob, asyncio.get_running_loop().time())
        self.kick(uid)

    def created(self, uid: str) -> None:
        """The create handler is done with a job (created, adopted, refused or failed): it holds nothing back."""
        backlog = len(self.creating)
        if self.creating.pop(uid, None) is not None and backlog == CREATES_FIRST_BACKLOG:
            self.queue.poke()  # the backlog just became short: held looks go now

    def _holdback(self, t: float) -> float:
        """New jobs first: looks due for less than CREATES_FIRST_SECONDS wait while many new jobs are being created."""
        for uid in [u for u, since in self.creating.items() if t - since >= CREATE_BACKLOG_SECONDS]:
            del self.creating[uid]
        return CREATES_FIRST_SECONDS if len(self.creating) >= CREATES_FIRST_BACKLOG else 0.0

    def follower(self, uid: str) -> Follower:
        """The job's follower (made on first use: the create handler's first look may come before the loop's)."""
        if uid not in self.followers:
            self.followers[uid] = Follower(wake=functools.partial(self.kick, uid))
        return self.followers[uid]

    def ensure_running(self) -> None:
        """Start the loop, from inside a kopf handler: its tasks inherit the context kopf posts Events from."""
        self.queue.ensure_running()

    def kick(self, uid: str) -> None:
        """Look at a job now (its RayJob, its spec or its ledger read changed)."""
        if uid in self.bodies:
            self.queue.wake(uid)

    def drop(self, uid: str) -> None:
        self.creating.pop(uid, None)
        self.bodies.pop(uid, None)
        self.followers.pop(uid, None)
        self.queue.discard(uid)

    async def stop(self) -> None:
        await self.queue.stop()

    async def _look(self, uid: str) -> float | None:
        """One look at a job; the seconds until the next (POLL_SECONDS after a surprise), None when done with it."""
        try:
            body, follower = self.bodies.get(uid), self.followers.get(uid)
            if body is None or follower is None:
                return POLL_SECONDS
            return await follow.follow_once(self.mem, body, follower)
        except Exception:  # one job's surprise must not stop the loop for all of them
            body = self.bodies.get(uid)
            log.exception("following the job failed", extra=log_ref(body) if body else {})
            metrics.RECONCILE_ERRORS.labels(handler="mirror").inc()
            return POLL_SECONDS
