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

Taking, renewing, taking over and releasing are compare-and-swap writes of the object:

- S3, through botocore (pyarrow cannot send conditional headers): `PutObject` with `If-None-Match: *` to create,
  `If-Match: <etag>` to renew, take over or release (a release is a write marking the lease released, never a
  delete: a conditional DeleteObject is not supported everywhere). What stores do, read in their source:
  AWS S3 supports both (If-None-Match since 2024-08, If-Match since 2024-11): 412 PreconditionFailed, 409
  ConditionalRequestConflict while another conditional write to the key is in flight. moto 5.2.5 (the tests'
  server; moto/s3/responses.py `put_object`): both, 412 on a mismatch, NoSuchKey (404) for If-Match on a missing
  key; its check and write are not under one lock, so two requests at the same instant can both pass (no test
  relies on that race). MinIO (minio/minio cmd/object-handlers.go `PutObjectHandler` -> `checkPreconditionsPUT` in
  cmd/object-handlers-common.go, evaluated under the object's namespace lock in cmd/erasure-object.go): both, 412
  on a mismatch, NoSuchKey for If-Match on a missing object.
  A store that ignores the headers (an old MinIO, some gateways) is found once per endpoint by a probe after this
  driver's first write: a rewrite of its own lease with `If-Match` of an ETag no object has (412 where honoured;
  elsewhere the same bytes rewritten, harmless). There the ETag is compared by the client (read, then write: a
  race of milliseconds instead of none) and every write is read back after a short pause, lost if another
  holder's token comes back; two drivers can overlap for up to one renewal before the loser's next check.
- Local storage: every read-compare-write under `flock` on the job root folder (the kernel drops it when its process
  dies: never stale); creation by `os.link` of a complete temporary file (atomic, and fails when the lease exists:
  O_EXCL without a half-written file to see), replacement by `os.replace`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from graft import storage

LEASE_FILE = "lease.json"
#: Lease lifetime without renewal, the renewal period (see above), a waiting driver's period between looks, and the
#: pause before a read-back on a store that ignores conditional headers.
TTL_S, RENEW_EVERY_S, POLL_S, READBACK_PAUSE_S = 30.0, 10.0, 1.0, 0.2

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


class _Conflict(Exception):
    """The object changed between read and write (another writer won)."""


def uri(root: str) -> str:
    return storage.join(root, LEASE_FILE)


def _stamp(moment: datetime) -> str:
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _record(holder: Holder, attempt: int, acquired: str, ttl: float, released: bool = False) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"holder": {"host": holder.host, "pid": holder.pid, "token": holder.token}, "attempt": attempt,
            "acquired_at": acquired, "renewed_at": _stamp(now),
            "expires_at": _stamp(now if released else now + timedelta(seconds=ttl)), "ttl_seconds": ttl,
            "released": released}


def _holder_of(record: dict[str, Any]) -> Holder:
    h = record.get("holder") or {}
    return Holder(str(h.get("host", "?")), int(h.get("pid", 0)), str(h.get("token", "")))


def _loads(raw: bytes) -> dict[str, Any]:
    """The lease object; a damaged one (not JSON, no holder or expiry) reads as released: anyone may take it."""
    try:
        record = json.loads(raw)
        if _parse(record["expires_at"]) and isinstance(record["holder"]["token"], str):
            return record
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    return {"holder": {"host": "?", "pid": 0, "token": ""}, "expires_at": _stamp(datetime.now(UTC)), "released": True}


def _expired(record: dict[str, Any]) -> bool:
    return bool(record.get("released")) or _parse(record["expires_at"]) <= datetime.now(UTC)


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


# -- backends: read -> (record, version); create / replace are compare-and-swap -------------------------------------


class _LocalBackend:
    def __init__(self, lease_uri: str):
        self.path = storage.filesystem(lease_uri)[1]

    @contextlib.contextmanager
    def _locked(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(os.path.dirname(self.path), os.O_RDONLY | os.O_DIRECTORY)  # the job root: no lock file
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def _raw(self) -> bytes | None:
        try:
            with open(self.path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def read(self) -> tuple[dict[str, Any] | None, Any]:
        raw = self._raw()
        return (None, None) if raw is None else (_loads(raw), raw)

    def write(self, body: bytes, version: Any) -> Any:
        """Create (version None) or replace the version read; raises _Conflict when the lease is not that one."""
        try:
            return self._write(body, version)
        except OSError as exc:  # read-only or full storage: one line naming the path
            raise storage.explain(self.path, exc) from exc

    def _write(self, body: bytes, version: Any) -> Any:
        with self._locked():
            if self._raw() != version:
                raise _Conflict
            tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb", buffering=0) as f:  # unbuffered: fsync sees every byte
                f.write(body)
                os.fsync(f.fileno())
            try:
                if version is None:
                    os.link(tmp, self.path)  # fails if it exists
                else:
                    os.replace(tmp, self.path)
            except FileExistsError:
                raise _Conflict from None
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        return body


@lru_cache(maxsize=16)
def _s3_client(options: storage.S3Options):
    import boto3
    from botocore.config import Config

    # The same timeouts as the job's other storage calls (storage.env_s3_options): a silent endpoint is given up on
    # within the retry budget, which storage.retried then spends.
    config = Config(connect_timeout=options.connect_timeout, read_timeout=options.request_timeout,
                    retries={"max_attempts": 3, "mode": "standard"})
    return boto3.client("s3", endpoint_url=options.endpoint, region_name=options.region or "us-east-1",
                        aws_access_key_id=options.access_key_id, aws_secret_access_key=options.secret_access_key,
                        aws_session_token=options.session_token, config=config)


#: Endpoint -> whether it honours conditional PutObject (found by the probe; absent: not known yet).
_CONDITIONAL: dict[str | None, bool] = {}
_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409", "404"}


def _transient(exc: BaseException) -> bool:
    """botocore's faults worth retrying: a 5xx answer or throttling, a connection refused, dropped or timed out."""
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        ReadTimeoutError,
    )

    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return status >= 500 or code in ("SlowDown", "Throttling", "ThrottlingException", "RequestTimeout")
    return isinstance(exc, ConnectionClosedError | ConnectTimeoutError | EndpointConnectionError | ReadTimeoutError)


class _S3Backend:
    def __init__(self, lease_uri: str):
        self.uri = lease_uri
        self.bucket, _, self.key = lease_uri[len("s3://"):].partition("/")
        self.options = storage.env_s3_options()
        self.client = _s3_client(self.options)

    def _call(self, method: str, **kwargs):
        """One S3 call, retried on transient faults within the job's storage budget like every other storage
        operation (storage.retried: the silent-endpoint warning, one line naming the endpoint at the end)."""
        return storage.retried(f"lease {method}", self.uri, self.options, lambda: self._request(method, **kwargs),
                               transient=_transient)

    def _request(self, method: str, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, method)(Bucket=self.bucket, Key=self.key, **kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _CONFLICT_CODES and method == "put_object":
                raise _Conflict from exc
            if code in ("NoSuchKey", "404") and method == "get_object":
                return None
            if _transient(exc):
                raise
            raise storage.StorageError(self.uri, f"{method} at {self.options.endpoint or 'AWS S3'}: {code or exc}"
                                       ) from exc
        except BotoCoreError as exc:
            if _transient(exc):
                raise
            raise storage.StorageError(self.uri, f"{method} at {self.options.endpoint or 'AWS S3'}: {exc}") from exc


    def read(self) -> tuple[dict[str, Any] | None, Any]:
        got = self._call("get_object")
        if got is None:
            return None, None
        return _loads(got["Body"].read()), got["ETag"]

    def write(self, body: bytes, version: Any) -> Any:
        conditional = _CONDITIONAL.get(self.options.endpoint, True)
        if not conditional and self.read()[1] != version:  # the headers' compare, client-side (a small race)
            raise _Conflict
        condition = ({"IfNoneMatch": "*"} if version is None else {"IfMatch": version}) if conditional else {}
        etag = self._call("put_object", Body=body, ContentType="application/json", **condition)["ETag"]
        if self.options.endpoint not in _CONDITIONAL:
            etag = self._probe(body, etag)
        if not _CONDITIONAL[self.options.endpoint]:
            time.sleep(READBACK_PAUSE_S)
            record, etag = self.read()
            if record is None or record["holder"]["token"] != json.loads(body)["holder"]["token"]:
                raise _Conflict
        return etag

    def _probe(self, body: bytes, etag: str) -> str:
        """Whether the endpoint honours If-Match: rewrite our own lease on a condition no object meets."""
        try:
            etag = self._call("put_object", Body=body, ContentType="application/json",
                              IfMatch='"graft-probe-no-object-has-this-etag"')["ETag"]
            _CONDITIONAL[self.options.endpoint] = False
            _log.warning("%s: the storage endpoint ignores conditional writes (If-Match); the job's lease falls "
                         "back to read-back checks", self.uri)
        except _Conflict:
            _CONDITIONAL[self.options.endpoint] = True
        return etag


def _backend(lease_uri: str):
    return _S3Backend(lease_uri) if storage.is_s3(lease_uri) else _LocalBackend(lease_uri)


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
            self.version = _backend(self.uri).write(body, self.version)

    def renew(self, attempt: int | None = None) -> None:
        """Extend the lease (recording the run's `attempt` when given); raises LeaseLost when another driver took it."""
        self.attempt = self.attempt if attempt is None else attempt
        try:
            self._write()
        except _Conflict:
            record, version = _backend(self.uri).read()
            if record is not None and record["holder"]["token"] == self.holder.token and not record.get("released"):
                self.version = version  # still ours (a read-back saw a moment of another's write): go on
                return
            self.lost = _lost_line(self.uri, self.holder, record)
            raise LeaseLost(self.lost) from None

    def release(self) -> None:
        """Mark the lease released (only if still ours: a lost lease is left to its new holder)."""
        try:
            self._write(released=True)
        except _Conflict:
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
    backend = _backend(uri(root))
    deadline = time.monotonic() + wait
    seen: tuple[str, str] | None = None  # (token, renewed_at) of the other holder, and when we first saw it
    seen_at = time.monotonic()
    while True:
        record, version = backend.read()
        if record is not None and (record["holder"]["token"], record.get("renewed_at", "")) != seen:
            seen, seen_at = (record["holder"]["token"], record.get("renewed_at", "")), time.monotonic()
        stale = record is not None and time.monotonic() - seen_at > float(record.get("ttl_seconds", ttl))
        if record is None or force or stale or _expired(record) or _dead_here(_holder_of(record)):
            lease = Lease(root, holder, attempt, _stamp(datetime.now(UTC)), ttl, version)
            try:
                lease._write()
                return lease
            except _Conflict:
                continue  # another driver got there first: look again
        if time.monotonic() >= deadline:
            raise LeaseHeld(held_line(job, uri(root), record))
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))


def check(root: str, holder: Holder) -> None:
    """Before a ledger write: raise LeaseLost unless `holder` still holds the job's lease."""
    record, _ = _backend(uri(root)).read()
    if record is None or record["holder"]["token"] != holder.token or record.get("released"):
        raise LeaseLost(_lost_line(uri(root), holder, record))
