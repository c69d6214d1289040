"""Where the job's lease object lives, and how it is written: read -> (record, version); create and replace are
compare-and-swap (graft/lease.py holds the lease's rules; this module only the stores).

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
import time
import uuid
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from graft import storage

#: The pause before a read-back on a store that ignores conditional headers.
READBACK_PAUSE_S = 0.2

_log = logging.getLogger(__name__)


class Conflict(Exception):
    """The object changed between read and write (another writer won)."""


def stamp(moment: datetime) -> str:
    """A lease time as the object spells it: UTC, whole seconds, `Z`."""
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_stamp(text: str) -> datetime:
    """The time a `stamp` spells."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def load_record(raw: bytes) -> dict[str, Any]:
    """The lease object; a damaged one (not JSON, no holder or expiry) reads as released: anyone may take it."""
    try:
        record = json.loads(raw)
        if parse_stamp(record["expires_at"]) and isinstance(record["holder"]["token"], str):
            return record
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    return {"holder": {"host": "?", "pid": 0, "token": ""}, "expires_at": stamp(datetime.now(UTC)), "released": True}


# -- backends: read -> (record, version); create / replace are compare-and-swap -------------------------------------


class LocalStore:
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
        return (None, None) if raw is None else (load_record(raw), raw)

    def write(self, body: bytes, version: Any) -> Any:
        """Create (version None) or replace the version read; raises Conflict when the lease is not that one."""
        try:
            return self._write(body, version)
        except OSError as exc:  # read-only or full storage: one line naming the path
            raise storage.explain(self.path, exc) from exc

    def _write(self, body: bytes, version: Any) -> Any:
        with self._locked():
            if self._raw() != version:
                raise Conflict
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
                raise Conflict from None
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        return body


@lru_cache(maxsize=16)
def s3_client(options: storage.S3Options):
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


class S3Store:
    def __init__(self, lease_uri: str):
        self.uri = lease_uri
        self.bucket, _, self.key = lease_uri[len("s3://"):].partition("/")
        self.options = storage.env_s3_options()
        self.client = s3_client(self.options)

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
                raise Conflict from exc
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
        return load_record(got["Body"].read()), got["ETag"]

    def write(self, body: bytes, version: Any) -> Any:
        conditional = _CONDITIONAL.get(self.options.endpoint, True)
        if not conditional and self.read()[1] != version:  # the headers' compare, client-side (a small race)
            raise Conflict
        condition = ({"IfNoneMatch": "*"} if version is None else {"IfMatch": version}) if conditional else {}
        etag = self._call("put_object", Body=body, ContentType="application/json", **condition)["ETag"]
        if self.options.endpoint not in _CONDITIONAL:
            etag = self._probe(body, etag)
        if not _CONDITIONAL[self.options.endpoint]:
            time.sleep(READBACK_PAUSE_S)
            record, etag = self.read()
            if record is None or record["holder"]["token"] != json.loads(body)["holder"]["token"]:
                raise Conflict
        return etag

    def _probe(self, body: bytes, etag: str) -> str:
        """Whether the endpoint honours If-Match: rewrite our own lease on a condition no object meets."""
        try:
            etag = self._call("put_object", Body=body, ContentType="application/json",
                              IfMatch='"graft-probe-no-object-has-this-etag"')["ETag"]
            _CONDITIONAL[self.options.endpoint] = False
            _log.warning("%s: the storage endpoint ignores conditional writes (If-Match); the job's lease falls "
                         "back to read-back checks", self.uri)
        except Conflict:
            _CONDITIONAL[self.options.endpoint] = True
        return etag


class ReadBackStore:
    """A store whose conditional writes Graft does not use (gs://): the version is the object's bytes, compared by
    the client before a write (read, then write: a race of milliseconds), and every write is read back after a
    short pause, lost if another holder's token comes back; as S3Store on an endpoint that ignores If-Match.

    GCS itself offers `ifGenerationMatch`, but fake-gcs-server (the emulator the tests run) ignores it on uploads
    (seen: 200 on a mismatched generation), so a store relying on it could not be tested here."""

    def __init__(self, lease_uri: str):
        self.uri = lease_uri

    def read(self) -> tuple[dict[str, Any] | None, Any]:
        try:
            raw = storage.read_bytes(self.uri)
        except FileNotFoundError:
            return None, None
        return load_record(raw), raw

    def write(self, body: bytes, version: Any) -> Any:
        if self.read()[1] != version:
            raise Conflict
        storage.write_bytes(self.uri, body)
        time.sleep(READBACK_PAUSE_S)
        record, raw = self.read()
        if record is None or record["holder"]["token"] != json.loads(body)["holder"]["token"]:
            raise Conflict
        return raw


#: The stores by the `lease` a storage backend names (graft/storage_backends/base.py).
STORES = {"s3": S3Store, "read-back": ReadBackStore, "local": LocalStore}


def store(lease_uri: str) -> Any:
    """The lease object's store, the one its storage scheme names (S3Store, ReadBackStore, LocalStore)."""
    return STORES[storage.backend(lease_uri).lease](lease_uri)
