"""One writer per job: the lease at `<job root>/lease.json`.

A driver takes it before its first ledger write, renews it from a thread while it lives, releases it when it ends.
Every ledger write (the driver's, rank 0's epoch record on a Ray worker, an in-process stage's) first checks that
its writer still holds it (`check`): a driver that lost it stops with `LeaseLost` instead of overwriting.

The object: `holder` (host, pid, a random token: the token is the identity; host and pid are for people and for
the dead-process rule), `attempt`, `acquired_at`, `renewed_at`, `expires_at`, `ttl_seconds`, `released`.

Timing: TTL 30 s, renewed every 10 s. Two renewals in a row can fail (a storage hiccup, with the client's own
retries) before anyone may take over, and a driver lost with its host blocks the job for at most 30 s. Expiry is
judged on the reader's clock, so hosts' clocks must agree to well within the 20 s margin (NTP does far better); a
driver that waits for a lease also counts it expired once it has not changed for a TTL of its own monotonic time,
whatever the clocks say. A holder on this host whose pid no longer exists (or is a zombie) is taken over at once:
a rerun after a kill does not wait.

Taking, renewing, taking over and releasing are compare-and-swap writes of the object (graft/leasestore.py: S3
conditional writes, or `flock` and atomic renames on local storage).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from graft import storage
from graft.leasestore import Conflict, parse_stamp, stamp, store

LEASE_FILE = "lease.json"
#: Lease lifetime without renewal, the renewal period (see above), and a waiting driver's period between looks.
TTL_S, RENEW_EVERY_S, POLL_S = 30.0, 10.0, 1.0

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Holder:
    """Who holds (or wants) a job's lease; it travels to Ray workers inside their StageConfig."""

    host: str
    pid: int
    token: str

    @classmethod
    def me(cls) -> Holder:
        """This process, with a fresh token."""
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex)

    def describe(self) -> str:
        return f"host {self.host} pid {self.pid}"


class LeaseHeld(RuntimeError):
    """Another driver holds the job's lease; one line naming it and the ways to take over."""


class LeaseLost(RuntimeError):
    """This driver no longer holds the job's lease: it stops instead of writing."""


def uri(root: str) -> str:
    return storage.join(root, LEASE_FILE)


def _record(holder: Holder, attempt: int, acquired: str, ttl: float, released: bool = False) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"holder": {"host": holder.host, "pid": holder.pid, "token": holder.token}, "attempt": attempt,
            "acquired_at": acquired, "renewed_at": stamp(now),
            "expires_at": stamp(now if released else now + timedelta(seconds=ttl)), "ttl_seconds": ttl,
            "released": released}


def _holder_of(record: dict[str, Any]) -> Holder:
    h = record.get("holder") or {}
    return Holder(str(h.get("host", "?")), int(h.get("pid", 0)), str(h.get("token", "")))


def _expired(record: dict[str, Any]) -> bool:
    return bool(record.get("released")) or parse_stamp(record["expires_at"]) <= datetime.now(UTC)


def _pid_gone(pid: int) -> bool:
    """Whether no live process has this pid here (a zombie counts as gone: it will never write again)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _dead_here(holder: Holder) -> bool:
    return holder.host == socket.gethostname() and holder.pid != os.getpid() and _pid_gone(holder.pid)


# -- the lease ------------------------------------------------------------------------------------------------------


def held_line(job: str, lease_uri: str, record: dict[str, Any]) -> str:
    """The one line a refused driver prints."""
    who = _holder_of(record)
    return (f"job {job!r} is already running: its lease {lease_uri} is held by {who.describe()} since "
            f"{record.get('acquired_at')} (attempt {record.get('attempt')}), expiring {record.get('expires_at')} "
            "unless renewed; wait for that run to end or its lease to expire, or take it over with --force-takeover "
            "(the other driver then stops at its next ledger write)")


@dataclass
class Lease:
    """A held lease: `renewing()` keeps it while a block runs, `release()` gives it up."""

    root: str
    holder: Holder
    attempt: int
    acquired_at: str
    ttl: float = TTL_S
    version: Any = None
    lost: str | None = None  #: why it was lost (set by the renewal thread)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def uri(self) -> str:
        return uri(self.root)

    def _write(self, released: bool = False) -> None:
        body = json.dumps(_record(self.holder, self.attempt, self.acquired_at, self.ttl, released), indent=2).encode()
        with self._lock:
            self.version = store(self.uri).write(body, self.version)

    def renew(self, attempt: int | None = None) -> None:
        """Extend the lease (recording the run's `attempt` when given); raises LeaseLost when another driver took it."""
        self.attempt = self.attempt if attempt is None else attempt
        try:
            self._write()
        except Conflict:
            record, version = store(self.uri).read()
            if record is not None and record["holder"]["token"] == self.holder.token and not record.get("released"):
                self.version = version  # still ours (a read-back saw a moment of another's write): go on
                return
            self.lost = _lost_line(self.uri, self.holder, record)
            raise LeaseLost(self.lost) from None

    def release(self) -> None:
        """Mark the lease released (only if still ours: a lost lease is left to its new holder)."""
        try:
            self._write(released=True)
        except Conflict:
            pass
        except storage.StorageError as exc:
            _log.warning("could not release %s: %s (it expires by itself)", self.uri, exc)

    @contextlib.contextmanager
    def renewing(self, every: float = RENEW_EVERY_S):
        """Renew from a background thread while the block runs."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(every):
                try:
                    self.renew()
                except LeaseLost:
                    _log.error("%s", self.lost)
                    return
                except Exception as exc:  # storage down: keep trying; the lease lasts a TTL meanwhile
                    _log.warning("could not renew %s: %s", self.uri, exc)

        thread = threading.Thread(target=loop, name="graft-lease", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=every + 5)


def _lost_line(lease_uri: str, holder: Holder, record: dict[str, Any] | None) -> str:
    now_by = ("the lease was removed" if record is None else "it was released" if record["holder"]["token"] ==
              holder.token else f"taken over by {_holder_of(record).describe()} at {record.get('acquired_at')}")
    return (f"{lease_uri}: this driver ({holder.describe()}) no longer holds the job's lease ({now_by}); stopped "
            "without writing the ledger")


def acquire(root: str, job: str, holder: Holder | None = None, *, attempt: int = 0, ttl: float = TTL_S,
            force: bool = False, wait: float = 0.0) -> Lease:
    """Take the job's lease: when there is none, it is released or expired, its holder's process is gone from this
    host, or `force`. Otherwise wait up to `wait` seconds for one of those, then raise LeaseHeld (one line)."""
    holder = holder or Holder.me()
    backend = store(uri(root))
    deadline = time.monotonic() + wait
    seen: tuple[str, str] | None = None  # (token, renewed_at) of the other holder, and when we first saw it
    seen_at = time.monotonic()
    while True:
        record, version = backend.read()
        if record is not None and (record["holder"]["token"], record.get("renewed_at", "")) != seen:
            seen, seen_at = (record["holder"]["token"], record.get("renewed_at", "")), time.monotonic()
        stale = record is not None and time.monotonic() - seen_at > float(record.get("ttl_seconds", ttl))
        if record is None or force or stale or _expired(record) or _dead_here(_holder_of(record)):
            lease = Lease(root, holder, attempt, stamp(datetime.now(UTC)), ttl, version)
            try:
                lease._write()
                return lease
            except Conflict:
                continue  # another driver got there first: look again
        if time.monotonic() >= deadline:
            raise LeaseHeld(held_line(job, uri(root), record))
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))


def check(root: str, holder: Holder) -> None:
    """Before a ledger write: raise LeaseLost unless `holder` still holds the job's lease."""
    record, _ = store(uri(root)).read()
    if record is None or record["holder"]["token"] != holder.token or record.get("released"):
        raise LeaseLost(_lost_line(uri(root), holder, record))
