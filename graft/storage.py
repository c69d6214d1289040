"""Object storage for checkpoints, features, the ledger and models: `s3://`, `gs://` and local paths.

Built on pyarrow.fs. Each scheme is one module of `graft.storage_backends` (its filesystem, settings, credentials,
how Ray reaches it); this module does what is the same for all of them. Settings come from the environment, as in a
RayJob pod (S3: the AWS variables, see storage_backends/s3.py; GCS: Application Default Credentials, see
storage_backends/gcs.py); a job's own endpoint and region (`spec.storage`) are handed to `use_endpoint`, never
written into the environment, and `worker_env` passes them on to the processes this one starts.

Writes are all-or-nothing: a reader sees the old object or the new one, never half of one, also when the writer is
interrupted (SIGTERM, Ctrl-C, an error) in the middle. On S3 and GCS an object becomes visible only when its upload
completes, and nothing but the complete body is ever handed to an upload (`write_bytes`); locally a temporary file
is renamed into place.

Storage faults are retried: the trainer's operations (the environment's settings) retry 5xx answers, throttling,
resets and timeouts with backoff and jitter for `spec.storage.retrySeconds` (`configure`), warn when an endpoint has
not answered for `WARN_AFTER_S`, and then fail with one line naming the operation, the object and the endpoint.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import posixpath
import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import tenacity

from graft import signals, storage_backends
from graft.storage_backends import SETTINGS, Backend
from graft.storage_backends.s3 import RAY_ATTEMPTS, S3Options, env_s3_options  # noqa: F401 (S3's, importable here)

_log = logging.getLogger(__name__)


class StorageError(RuntimeError):
    """Object storage could not be read or written; the message names the URI and the cause."""

    def __init__(self, uri: str, cause: str):
        self.uri = uri
        self.cause = cause
        super().__init__(f"{uri}: {cause}")


#: The trainer's retry budget (`spec.storage.retrySeconds`; `configure`).
DEFAULT_RETRY_SECONDS = 120.0
#: An operation still waiting for the endpoint after this long is reported (once) while it goes on.
WARN_AFTER_S = 10.0


def configure(retry_seconds: float) -> None:
    """Set how long this process's environment-configured operations retry transient storage faults."""
    SETTINGS.retry_seconds = float(retry_seconds)


def use_endpoint(endpoint: str | None, region: str | None = None, uri: str = "s3://") -> None:
    """The job's endpoint and region (`spec.storage`) for this process's operations on the scheme of its storage
    `uri`. For S3 the endpoint goes over the environment's `AWS_ENDPOINT_URL` (an `AWS_ENDPOINT_URL_S3`, the SDKs'
    S3-only override, still wins), the region under the environment's `AWS_REGION`. None: the environment's alone."""
    SETTINGS.scheme = storage_backends.for_endpoint(uri).scheme
    SETTINGS.endpoint, SETTINGS.region = endpoint or None, region or None


def worker_env() -> dict[str, str]:
    """The settings this process uses, as the environment variables each scheme reads, for the processes it starts
    (Ray's workers get them through runtime_env): they read their storage settings from the environment."""
    env: dict[str, str] = {}
    for prefix in storage_backends.remote_prefixes():
        env.update(backend(prefix).worker_env())
    return env


def backend(uri: str) -> Backend:
    """The storage scheme that handles `uri` (an object store's, else the local filesystem's)."""
    return storage_backends.for_uri(uri)


def is_remote(uri: str) -> bool:
    """Whether `uri` is in object storage (`s3://`, `gs://`, ...): every pod of a cluster reads the same objects."""
    return backend(uri).remote


def filesystem(uri: str, options: Any = None) -> tuple[pafs.FileSystem, str]:
    """The filesystem for a URI and the path inside it (`bucket/key` for object stores, absolute for local).

    `options` (the scheme's, e.g. S3Options) replaces the environment's settings (endpoint, keys) for this call."""
    return backend(uri).filesystem(uri, options)


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI with '/' (local paths too)."""
    if "://" in uri:
        scheme, _, rest = uri.partition("://")
        return f"{scheme}://" + posixpath.join(rest.rstrip("/"), *parts)
    return str(Path(uri).joinpath(*parts))


def explain(uri: str, exc: BaseException) -> StorageError:
    """A storage error as one line: the URI and what went wrong in words (read-only, full, access denied, ...)."""
    text = str(exc)
    lowered = text.lower()
    code = getattr(exc, "errno", None)
    if code == errno.EROFS:
        cause = "read-only storage: nothing can be written here (mount it read-write, or set spec.storage.uri)"
    elif code in (errno.ENOSPC, errno.EDQUOT):
        cause = "storage full: no space left (free some, or point spec.storage.uri elsewhere)"
    elif code == errno.EACCES or isinstance(exc, PermissionError):
        cause = f"permission denied (the user this runs as, uid {os.getuid()}, may not write here)"
    elif "nosuchbucket" in lowered or "bucket does not exist" in lowered or "bucket not found" in lowered:
        cause = "bucket does not exist"
    elif "access denied" in lowered or "accessdenied" in lowered or "forbidden" in lowered:
        cause = "access denied (check the credentials Secret and the bucket policy)"
    elif any(s in lowered.replace("_", "") for s in ("invalidaccesskeyid", "signaturedoesnotmatch", "credentials")):
        cause = "credentials rejected (check the credentials Secret)"
    elif isinstance(exc, FileNotFoundError) or "path does not exist" in lowered or "not found" in lowered:
        cause = "not found"
    elif "connect" in lowered or "curl" in lowered or "timeout" in lowered:
        cause = f"cannot reach the storage endpoint ({text.splitlines()[0]})"
    else:
        cause = text.splitlines()[0] if text else type(exc).__name__
    return StorageError(uri, cause)


#: What pyarrow (the AWS SDK or google-cloud-cpp underneath) says for a fault worth retrying: a 5xx answer,
#: throttling, a dropped or refused connection, a request that timed out (google-cloud-cpp's status codes
#: UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED). Access denied, a missing bucket or key are not retried.
_TRANSIENT = re.compile(
    r"HTTP status 5\d\d|UNAVAILABLE|DEADLINE_EXCEEDED|RESOURCE_EXHAUSTED|"
    r"SLOW_DOWN|SlowDown|THROTTL|Throttl|SERVICE_UNAVAILABLE|INTERNAL_FAILURE|InternalError|"
    r"NETWORK_CONNECTION|REQUEST_TIMEOUT|curlCode|Timeout|timed out|Connection reset|Broken pipe"
)


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and bool(_TRANSIENT.search(str(exc)))


def _call(op: str, uri: str, options: Any, fn: Callable[[pafs.FileSystem, str], Any]) -> Any:
    """`fn(filesystem, path)` for `uri`, retried on transient faults within the options' budget (see the module
    docstring). Errors come out as StorageError (FileNotFoundError as it is)."""
    options = options or backend(uri).env_options()  # read from the environment once per operation (None: local)
    fs, path = filesystem(uri, options)
    try:
        if options is None or options.retry_seconds <= 0:  # local storage, or a caller with its own deadline
            return fn(fs, path)
        return retried(op, uri, options, lambda: fn(fs, path))
    except (FileNotFoundError, StorageError):
        raise
    except (OSError, ValueError) as exc:
        raise explain(uri, exc) from exc


def retried(op: str, uri: str, options: Any, attempt: Callable[[], Any],
            transient: Callable[[BaseException], bool] = _transient) -> Any:
    """`attempt()`, retried while it fails with a `transient` fault, for `options.retry_seconds`; a silent endpoint
    reported after WARN_AFTER_S; after the budget, StorageError naming `op`, `uri` and the endpoint. For S3 calls
    made with another client (the lease's botocore), with that client's idea of `transient`."""
    endpoint = options.where
    started = time.monotonic()
    silent = threading.Timer(WARN_AFTER_S, lambda: _log.warning(
        "storage: %s %s: no answer from %s for %.0f s; retrying for up to %.0f s", op, uri, endpoint, WARN_AFTER_S,
        options.retry_seconds))
    silent.daemon = True
    silent.start()

    def retrying(state: tenacity.RetryCallState) -> None:
        _log.warning("storage: %s %s at %s failed (%s); retrying (%.0f of %.0f s used)", op, uri, endpoint,
                     str(state.outcome.exception()).splitlines()[0], time.monotonic() - started, options.retry_seconds)

    try:
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception(transient),
            wait=tenacity.wait_exponential_jitter(multiplier=0.2, max=10.0),
            stop=tenacity.stop_after_delay(options.retry_seconds),
            before_sleep=retrying,
            reraise=True,
        )(attempt)
    except Exception as exc:
        if not transient(exc):
            raise
        cause = explain(uri, exc).cause
        raise StorageError(uri, f"{op} failed at {endpoint} after {time.monotonic() - started:.0f} s of retries "
                                f"(spec.storage.retrySeconds: {options.retry_seconds:g}): {cause}") from exc
    finally:
        silent.cancel()


def read_bytes(uri: str, options: Any = None) -> bytes:
    """Read a whole object. Raises FileNotFoundError when it does not exist, StorageError otherwise (a
    missing bucket included: "no ledger yet" and "wrong bucket" must not look alike)."""

    def read(fs: pafs.FileSystem, path: str) -> bytes:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            if is_remote(uri) and fs.get_file_info(path.split("/", 1)[0]).type == pafs.FileType.NotFound:
                raise StorageError(uri, "bucket does not exist")
            raise FileNotFoundError(uri)
        if not is_remote(uri):
            with fs.open_input_stream(path) as f:
                return f.read()
        return _read_whole(uri, fs, path, info)

    return _call("read", uri, options, read)


_CONSISTENT_READ_TRIES = 8


def _read_whole(uri: str, fs: pafs.FileSystem, path: str, info: pafs.FileInfo) -> bytes:
    """One version of an object, whole, even while a writer replaces it.

    pyarrow reads an S3 object as one ranged GET sized by an earlier HEAD, so an object replaced in between by a
    longer version comes back as that version cut to the old length (checked on every object store alike). The
    read counts only when the object's size and modification time are the same before and after it (and the
    length matches); otherwise it is read again.

    The stream is read with a length (one byte more than the object had: a longer version shows as a length that
    does not match): pyarrow's `read()` with none was 60x slower on S3 (5 s for a 45 MB checkpoint from a local S3
    server, 0.08 s with the length)."""
    before = info
    for _ in range(_CONSISTENT_READ_TRIES):
        with fs.open_input_stream(path) as f:
            data = f.read(before.size + 1)
        after = fs.get_file_info(path)
        if after.type == pafs.FileType.NotFound:
            raise FileNotFoundError(path)
        if before.size == after.size == len(data) and before.mtime == after.mtime:
            return data
        before = after
    raise OSError(f"{uri} kept changing while it was read ({_CONSISTENT_READ_TRIES} tries)")


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object, all or nothing: an interrupted write leaves the previous version (or no object)."""

    def write(fs: pafs.FileSystem, path: str) -> None:
        if is_remote(uri):
            # pyarrow completes an upload with what it was given whenever the stream closes, an exception's
            # included, and cannot abort one: so the complete body is ready before the stream opens and goes in one
            # write, and SIGTERM / Ctrl-C wait for close() (signals.held).
            try:
                with signals.held(), fs.open_output_stream(path) as f:
                    f.write(data)
            except FileNotFoundError as exc:  # an object store has no folders to miss: its bucket is missing (GCS)
                raise StorageError(uri, "bucket does not exist") from exc
            return
        _write_local(path, data)

    _call("write", uri, None, write)


def _write_local(path: str, data: bytes) -> None:
    """A temporary file beside `path`, synced, then renamed over it (atomic on POSIX)."""
    parent = posixpath.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = posixpath.join(parent, f".{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_json(uri: str, options: Any = None) -> Any:
    return json.loads(read_bytes(uri, options))


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True).encode())


def exists(uri: str) -> bool:
    return _call("check", uri, None, lambda fs, path: fs.get_file_info(path).type != pafs.FileType.NotFound)


def is_dir(uri: str) -> bool:
    """Whether a URI is a folder: a local directory, or an object-store prefix with objects below it."""
    return _call("check", uri, None, lambda fs, path: fs.get_file_info(path).type == pafs.FileType.Directory)


def list_dir(uri: str, recursive: bool = False, options: Any = None) -> list[str]:
    """URIs of the files below a prefix (empty when it does not exist)."""

    def listing(fs: pafs.FileSystem, path: str) -> list[str]:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
        return [posixpath.relpath(i.path, path) for i in infos if i.type == pafs.FileType.File]

    base = uri.rstrip("/")
    return sorted(join(base, *rel.split("/")) for rel in _call("list", uri, options, listing))


def ray_storage(uri: str) -> tuple[str, pafs.FileSystem | None]:
    """`(storage_path, storage_filesystem)` for Ray Train's RunConfig.

    With an explicit filesystem Ray wants the path without a scheme (`bucket/prefix`)."""
    return backend(uri).ray_storage(uri)


def from_ray_path(root: str, path: str) -> str:
    """The URI of a path Ray Train reports for a run stored under `root` (it drops the scheme when given a
    filesystem)."""
    return backend(root).from_ray_path(path)
