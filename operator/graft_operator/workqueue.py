"""The operator's concurrency, apart from what it schedules: a delayed work queue (the mirror loop's), and the
per-endpoint bulkhead the ledger reads wait in.

Like client-go's `workqueue` beside a controller: the domain modules say what a look at a job does and when the next
one is due; this module says how many run at once, that one key never runs twice at once, and who goes first. Nothing
here knows what a job, a RayJob or a ledger is.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

log = logging.getLogger("graft_operator")


class Slots:
    """A semaphore whose urgent waiters go first: a finished job's final read (what its Succeeded status waits for)
    does not queue behind the running jobs' progress polls (issue 16: at 1,000 jobs the polls filled the queue)."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiting: tuple[deque[asyncio.Future], deque[asyncio.Future]] = (deque(), deque())  # (urgent, other)
        self._keys: dict[str, asyncio.Future] = {}

    async def acquire(self, urgent: bool = False, key: str | None = None) -> None:
        """Take a slot, waiting in line (urgent waiters first); `key` names the wait for `promote`."""
        if self.free > 0 and not any(self._waiting):
            self.free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[0 if urgent else 1].append(waiter)
        if key is not None:
            self._keys[key] = waiter
        try:
            await waiter  # release() handed its slot over
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed over just as the wait was given up: pass it on
            else:
                for queue in self._waiting:
                    if waiter in queue:
                        queue.remove(waiter)
            raise
        finally:
            if key is not None and self._keys.get(key) is waiter:
                del self._keys[key]

    def promote(self, key: str) -> None:
        """Move a waiting acquire to the urgent line (a job that finished while its progress poll waited)."""
        waiter = self._keys.get(key)
        if waiter is not None and waiter in self._waiting[1]:
            self._waiting[1].remove(waiter)
            self._waiting[0].append(waiter)

    def release(self) -> None:
        for queue in self._waiting:
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self.free += 1


class Bulkhead:
    """`Slots` per endpoint (`size` each), so that a hung endpoint holds at most its own; a wait at an endpoint that
    answers nothing gives up after `patience` seconds of its silence."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._slots: dict[str, Slots] = {}
        self._ended_at: dict[str, float] = {}  # endpoint -> when work there last ended (monotonic)
        self._queued: set[str] = set()  # keys waiting for a slot

    def queued(self, key: str) -> bool:
        """`key` waits for a slot (at an endpoint that answers: a silent one's waits end at its patience)."""
        return key in self._queued

    def promote(self, endpoint: str, key: str) -> None:
        """Move `key`'s wait at `endpoint` (if it waits) to the urgent line."""
        if (slots := self._slots.get(endpoint)) is not None:
            slots.promote(key)

    async def enter(self, endpoint: str, key: str, *, urgent: bool, patience: float) -> None:
        """Wait for a free slot at the endpoint. While its work keeps ending, a wait takes its turn however long the
        queue (many jobs at once are the operator's backlog, not storage trouble: issue 16 saw 1,000 jobs' reads
        miss a deadline that counted the queue); once the endpoint has ended nothing for `patience` seconds, the
        wait ends in TimeoutError, so a hung endpoint is reported as it was (issue 10). Pair with `leave`."""
        slots = self._slots.setdefault(endpoint, Slots(self.size))
        self._queued.add(key)
        # One place in line for the whole wait (a wait that is given up and taken again goes to the back).
        acquire = asyncio.ensure_future(slots.acquire(urgent, key))
        try:
            while True:
                done, _ = await asyncio.wait({acquire}, timeout=patience)
                if done:
                    return acquire.result()
                if time.monotonic() - self._ended_at.get(endpoint, -math.inf) >= patience:
                    raise TimeoutError
        except BaseException:
            if acquire.done() and not acquire.cancelled() and acquire.exception() is None:
                slots.release()  # taken just as the wait ended: give it back
            else:
                acquire.cancel()  # Slots.acquire passes on a slot handed over meanwhile
            raise
        finally:
            self._queued.discard(key)

    def leave(self, endpoint: str) -> None:
        """The work that `enter` let in has ended (answered or failed): the endpoint is alive, its slot is free."""
        self._ended_at[endpoint] = time.monotonic()
        if (slots := self._slots.get(endpoint)) is not None:  # None once cleared: nothing waits any more
            slots.release()

    def clear(self) -> None:
        self._slots.clear()


class DelayedQueue:
    """Keys due at a time, handled when due by `handle(key)`, at most `concurrency` at once and never one key twice at
    once. `handle` returns the seconds until the key is due again, or None when it is done (then `done(key)` is
    called, unless the key was woken while it was handled). `holdback(t)` says how long due keys wait at time t."""

    def __init__(self, handle: Callable[[str], Awaitable[float | None]], done: Callable[[str], None], *,
                 concurrency: int, idle: float, holdback: Callable[[float], float] = lambda t: 0.0) -> None:
        self._handle, self._done, self._holdback = handle, done, holdback
        self.concurrency, self.idle = concurrency, idle
        self.due: dict[str, float] = {}
        self.busy: set[str] = set()
        self._changed: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._inflight: set[asyncio.Task] = set()

    def __contains__(self, key: str) -> bool:
        return key in self.due

    def ensure_running(self) -> None:
        """Start the loop (from inside a kopf handler: its tasks inherit the context kopf posts Events from)."""
        if self._task is None or self._task.done():
            self._changed = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="graft-supervisor")

    def wake(self, key: str) -> None:
        """Due now (a holdback counts from now)."""
        self.due[key] = asyncio.get_running_loop().time()
        self.poke()

    def poke(self) -> None:
        """Something the holdback depends on changed: look at what is due again."""
        if self._changed is not None:
            self._changed.set()

    def discard(self, key: str) -> None:
        self.due.pop(key, None)

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
            hold = t - self._holdback(t)
            for key in [k for k, when in self.due.items() if when <= hold and k not in self.busy]:
                self.busy.add(key)
                self.due[key] = math.inf
                task = loop.create_task(self._one(key, limit))
                self._inflight.add(task)  # the loop keeps only weak references to tasks
                task.add_done_callback(self._inflight.discard)
            upcoming = min(self.due.values(), default=t + self.idle) + (t - hold)
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=min(max(0.01, upcoming - t), self.idle))
            except TimeoutError:
                pass

    async def _one(self, key: str, limit: asyncio.Semaphore) -> None:
        delay: float | None = None
        try:
            async with limit:
                delay = await self._handle(key)
        finally:
            self.busy.discard(key)
            if key in self.due:
                now = asyncio.get_running_loop().time()
                if delay is not None:
                    self.due[key] = min(self.due[key], now + delay)
                elif self.due[key] == math.inf:  # not woken meanwhile: done with it
                    self._done(key)
                else:
                    self.due[key] = now
            assert self._changed is not None
            self._changed.set()
