"""Reading a job's ledger from object storage with the credentials its spec names, off the status path.

The keys are read from the Secret in the job's namespace, kept in memory only, and never logged: they travel
inside `storage.S3Options`, whose repr hides them.

Storage never holds up status (issue 10): `Reads.start` returns at once and hands the outcome to a callback. A read
that has not answered within the deadline is reported as such while its thread runs on; a job has at most one read
in flight, so a job whose read hangs starts no other; reads run on threads of their own, at most `PER_ENDPOINT` at a
time per storage endpoint, so a hung endpoint cannot take the threads that reads elsewhere need. The wait for one of
those threads counts against the deadline only while the endpoint answers nothing.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from graft import storage
from graft.api.models import TransferJobSpec
from graft.ledger import DamagedLedger, Ledger, job_root
from graft_operator import client, metrics
from graft_operator.conditions import Reason
from graft_operator.workqueue import Bulkhead

log = logging.getLogger("graft_operator")

DEFAULT_TIMEOUT = 5.0  # seconds a ledger read may take before the status says it could not be read
THREADS = 32  # reader threads in all
PER_ENDPOINT = 8  # reader threads one storage endpoint may hold: a hung endpoint holds at most these
_SECRET_TTL = 60.0  # seconds a Secret's keys are reused before it is read again (a rotated key is seen then)
PYARROW_MARGIN = 2  # whole seconds pyarrow waits on a silent endpoint beyond the deadline (see `pyarrow_timeout`)


class LedgerUnavailable(RuntimeError):
    """The ledger could not be read; the message names the URI or Secret and the cause, never a key."""


class LedgerDamaged(LedgerUnavailable):
    """The ledger (and its previous version) does not parse; the message says which object, why, and the ways out."""


#: Condition reasons of a ledger that cannot be read, and of one that was read but does not parse.
UNAVAILABLE, DAMAGED = Reason.LEDGER_UNAVAILABLE, Reason.LEDGER_DAMAGED


class Secrets:
    """The storage credentials Secrets, read through the API and kept in memory for a minute."""

    def __init__(self, api: client.Kube | None) -> None:
        self.api = api
        self._kept: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}

    async def data(self, namespace: str, name: str) -> dict[str, str]:
        kept = self._kept.get((namespace, name))
        if kept and time.monotonic() - kept[0] < _SECRET_TTL:
            return kept[1]
        body = await self.api.get("Secret", name, namespace) if self.api is not None else None
        if body is None:
            raise LedgerUnavailable(f"Secret {namespace}/{name} (spec.storage.credentialsSecret) does not exist")
        data = {k: base64.b64decode(v).decode() for k, v in (body.get("data") or {}).items()}
        self._kept[(namespace, name)] = (time.monotonic(), data)
        return data


async def s3_options(secrets: Secrets, namespace: str, spec: TransferJobSpec, deadline: float | None = None
                     ) -> Any:
    """Explicit settings for a job's storage, its scheme's (S3Options, GcsOptions; None for local storage).

    With a `deadline` (seconds), pyarrow gives up on a silent endpoint a little after it (`pyarrow_timeout`), in one
    attempt (the operator's next poll is its retry), so that a hung read frees its thread soon after it is reported."""
    st = spec.storage
    if st is None or not (backend := storage.backend(st.uri)).remote:
        return None
    keys = None
    ref = st.credentials_secret
    wanted = backend.secret_keys(ref.model_dump(by_alias=True)) if ref is not None else {}
    if wanted:
        data = await secrets.data(namespace, ref.name)
        missing = [k for k in wanted.values() if k not in data]
        if missing:
            raise LedgerUnavailable(f"Secret {namespace}/{ref.name} has no key(s) {', '.join(missing)}")
        keys = {role: data[key] for role, key in wanted.items()}
    late = pyarrow_timeout(deadline) if deadline is not None else None
    return backend.options(st.endpoint, st.region, keys, deadline=late)


def pyarrow_timeout(deadline: float) -> float:
    """Seconds pyarrow may wait on a silent endpoint (to connect, or for an answer) in a read due within `deadline`:
    clearly longer, so that a hung read is always reported as timed out (LedgerTimeout), never as pyarrow's own
    error (LedgerUnavailable) depending on which of the two a loaded machine wakes first.

    pyarrow's `request_timeout` reaches curl as CURLOPT_LOW_SPEED_TIME in whole seconds, truncated (aws-sdk-cpp
    `src/aws-cpp-sdk-core/source/http/curl/CurlHandleContainer.cpp`), and curl gives up once its once-a-second
    speed check has seen nothing for that long (curl `lib/speedcheck.c`): measured against a silent endpoint, 1.0 s
    and 3.0 s gave up 20 ms after, and 1.5 s after 1.0 s, before the deadline. A timeout equal to the deadline
    raced it (issue 23); the whole-second margin leaves the event loop that long to report the deadline first."""
    return float(math.ceil(deadline) + PYARROW_MARGIN)


def storage_root(spec: TransferJobSpec, uid: str) -> str | None:
    """`<storage.uri>/<uid>`: where the job writes."""
    return job_root(spec.storage.uri, uid) if spec.storage is not None else None


def endpoint_of(spec: TransferJobSpec) -> str:
    """The storage endpoint a job's reads go to: what one hung server can take down."""
    st = spec.storage
    return storage.backend(st.uri).endpoint_label(st.endpoint, st.region) if st is not None else "local"


def _load(root: str, options: Any) -> dict[str, Any] | None:
    """On a reader thread: the ledger's status projection (Ledger.to_status()), None when there is none yet."""
    try:
        ledger = Ledger.load(root, options)
    except storage.StorageError as exc:
        raise LedgerUnavailable(str(exc)) from None
    except DamagedLedger as exc:  # on a cluster a job starts over as a new TransferJob (a new uid)
        raise LedgerDamaged(exc.line(start_over="delete and recreate the TransferJob to start over")) from None
    except ValueError as exc:  # a ledger that does not parse
        raise LedgerUnavailable(f"{Ledger.uri(root)}: unreadable ledger ({exc.__class__.__name__})") from None
    return ledger.to_status() if ledger is not None else None


@dataclass(frozen=True)
class Outcome:
    """What one read came to: the projection (None: no ledger yet), or why not as (reason, message)."""

    ledger: dict[str, Any] | None = None
    problem: tuple[str, str] | None = None
    #: The read ended after its deadline had already been reported (its thread was hung until then).
    late: bool = False


def ledger_uri(spec: TransferJobSpec, uid: str) -> str:
    root = storage_root(spec, uid)
    return Ledger.uri(root) if root else "(no storage)"


def timeout_problem(uri: str, deadline: float) -> tuple[str, str]:
    """(reason, message) for a ledger that did not answer within the deadline: the same words every time, so that
    the condition that carries them does not change (or flap) while the endpoint stays silent."""
    return Reason.LEDGER_TIMEOUT, (f"{uri} could not be read within {deadline:g} s (the storage endpoint did not "
                                   "answer); stage progress shows the last read")


def _problem(exc: BaseException, uri: str) -> tuple[str, str]:
    if isinstance(exc, LedgerDamaged):
        return DAMAGED, str(exc)
    if isinstance(exc, LedgerUnavailable):
        return UNAVAILABLE, str(exc)
    return UNAVAILABLE, f"{uri}: {exc.__class__.__name__}: {exc}"


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[], Any]) -> None:
    """From a reader thread: run fn on the loop (unless the operator has stopped it)."""
    try:
        loop.call_soon_threadsafe(fn)
    except RuntimeError:  # the loop is closed: nothing waits any more
        pass


class Reads:
    """Ledger reads off the status path: bounded in time, one in flight per job, isolated per endpoint."""

    def __init__(self, api: client.Kube | None = None, timeout: float = DEFAULT_TIMEOUT, threads: int = THREADS,
                 per_endpoint: int = PER_ENDPOINT):
        self.timeout, self.threads, self.per_endpoint = timeout, threads, per_endpoint
        self.secrets = Secrets(api)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._endpoints = Bulkhead(per_endpoint)  # where reads wait for a thread
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        self.overdue = 0  # reads past their deadline whose thread has not ended

    def busy(self, uid: str) -> bool:
        """A read of this job is in flight (or its thread still hangs after the deadline was reported)."""
        return uid in self._busy

    def queued(self, uid: str) -> bool:
        """The job's read waits its turn at an endpoint that answers (the operator's backlog, not the storage's)."""
        return self._endpoints.queued(uid)

    def start(self, uid: str, namespace: str, spec: TransferJobSpec, deliver: Callable[[Outcome], None],
              urgent: bool = False) -> bool:
        """Start reading a job's ledger; False (and nothing started) while its previous read is in flight (an urgent
        start then moves that read, while it waits for a slot, to the urgent line).

        `deliver` is called on the event loop: once with the outcome, within the deadline; and, when the deadline
        passed first, once more when the hung thread ends (`late=True`)."""
        if uid in self._busy:
            if urgent:
                self._endpoints.promote(endpoint_of(spec), uid)
            return False
        self._busy.add(uid)
        task = asyncio.get_running_loop().create_task(self._read(uid, namespace, spec, deliver, urgent),
                                                      name=f"graft-ledger-read-{uid}")
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)
        return True

    async def _read(self, uid: str, namespace: str, spec: TransferJobSpec, deliver: Callable[[Outcome], None],
                    urgent: bool) -> None:
        loop = asyncio.get_running_loop()
        root = storage_root(spec, uid)
        uri = ledger_uri(spec, uid)
        endpoint = endpoint_of(spec)
        thread: concurrent.futures.Future | None = None

        async def attempt() -> dict[str, Any] | None:
            nonlocal thread
            if root is None:
                return None
            options = await asyncio.wait_for(s3_options(self.secrets, namespace, spec, deadline=self.timeout),
                                             self.timeout)
            # Left when the thread ends, not when the wait for it does. The wait counts against the deadline only while
            # the endpoint answers nothing (`Bulkhead.enter`).
            await self._endpoints.enter(endpoint, uid, urgent=urgent, patience=self.timeout)
            try:
                thread = self._executor().submit(_load, root, options)
            except BaseException:
                self._endpoints.leave(endpoint)
                raise
            thread.add_done_callback(lambda _: _call_soon(loop, functools.partial(self._endpoints.leave, endpoint)))
            return await asyncio.wait_for(asyncio.wrap_future(thread), self.timeout)

        try:
            # The deadline covers the Secret and the read itself; the wait for a free slot at the endpoint counts only
            # while the endpoint answers nothing (see `_queue`).
            outcome = Outcome(ledger=await attempt())
        except TimeoutError:
            outcome = Outcome(problem=timeout_problem(uri, self.timeout))
        except Exception as exc:  # any failure is an outcome the status reports, not a crash
            outcome = Outcome(problem=_problem(exc, uri))
        if thread is None or thread.done():
            self._busy.discard(uid)
            self._deliver(deliver, outcome)
            return
        # The deadline passed with the thread still reading: report it now, keep the job busy until the thread ends.
        self._deliver(deliver, outcome)
        self.overdue += 1
        metrics.LEDGER_READS_OVERDUE.set(self.overdue)
        try:
            late = Outcome(ledger=await asyncio.wrap_future(thread), late=True)
        except Exception as exc:
            late = Outcome(problem=_problem(exc, uri), late=True)
        finally:
            self.overdue -= 1
            metrics.LEDGER_READS_OVERDUE.set(self.overdue)
            self._busy.discard(uid)
        self._deliver(deliver, late)

    @staticmethod
    def _deliver(deliver: Callable[[Outcome], None], outcome: Outcome) -> None:
        try:
            deliver(outcome)
        except Exception:  # one job's surprise must not stop its reads
            log.exception("handling a ledger read failed")

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="graft-ledger")
        return self._pool

    async def close(self) -> None:
        """Stop waiting for reads. Hung threads are not interrupted (Python cannot); the interpreter joins them at
        exit, within `pyarrow_timeout(deadline)`, since pyarrow was asked for one attempt of that long."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._endpoints.clear()
        self._busy.clear()
