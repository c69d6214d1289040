"""Object storage for checkpoints, features, the ledger and models: `s3://` and local paths.

Built on pyarrow.fs. S3 settings come from the environment, as in a RayJob pod whose credentials
arrive from a Secret: `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`), `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` / `AWS_DEFAULT_REGION`; a job's own endpoint and region
(`spec.storage`) are handed to `use_endpoint`, never written into the environment, and `worker_env` passes them on to
the processes this one starts.

Writes are all-or-nothing: a reader sees the old object or the new one, never half of one, also when the writer is
interrupted (SIGTERM, Ctrl-C, an error) in the middle. On S3 an object becomes visible only when its upload
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
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs
import tenacity

from graft import signals

_log = logging.getLogger(__name__)


class StorageError(RuntimeError):
    """Object storage could not be read or written; the message names the URI and the cause."""

    def __init__(self, uri: str, cause: str):
        self.uri = uri
        self.cause = cause
        super().__init__(f"{uri}: {cause}")


@dataclass(frozen=True)
class S3Options:
    """S3 settings: the environment's (see the module docstring) unless a caller passes its own (the operator reads
    them from a Secret).

    `repr` never shows the keys, so an options object can appear in a log line or traceback safely. The timeouts
    and attempts are pyarrow's (seconds per connection, seconds per request, tries per request); a caller that
    must answer within a deadline (the operator) lowers them so that a hung endpoint frees its thread sooner."""

    endpoint: str | None = None
    region: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    connect_timeout: float = 5.0
    request_timeout: float = 30.0
    max_attempts: int = 3
    #: How long an operation is retried after pyarrow's own attempts fail with a transient error (0: not at all,
    #: what a caller with its own deadline wants).
    retry_seconds: float = 0.0


#: The trainer's retry budget (`spec.storage.retrySeconds`; `configure`).
DEFAULT_RETRY_SECONDS = 120.0
_retry_seconds = DEFAULT_RETRY_SECONDS
#: An operation still waiting for the endpoint after this long is reported (once) while it goes on.
WARN_AFTER_S = 10.0


def configure(retry_seconds: float) -> None:
    """Set how long this process's environment-configured operations retry transient storage faults."""
    global _retry_seconds
    _retry_seconds = float(retry_seconds)


#: The job's endpoint and region (`use_endpoint`); None: the environment's.
_endpoint: str | None = None
_region: str | None = None


def use_endpoint(endpoint: str | None, region: str | None = None) -> None:
    """The job's S3 endpoint and region (`spec.storage`) for this process's operations: the endpoint over the
    environment's `AWS_ENDPOINT_URL` (an `AWS_ENDPOINT_URL_S3`, the SDKs' S3-only override, still wins), the region
    under the environment's `AWS_REGION`. None: the environment's alone."""
    global _endpoint, _region
    _endpoint, _region = endpoint or None, region or None


def worker_env() -> dict[str, str]:
    """The endpoint and region this process uses, as the AWS variables, for the processes it starts (Ray's workers
    get them through runtime_env): they read their S3 settings from the environment."""
    options = env_s3_options()
    named = {"AWS_ENDPOINT_URL": options.endpoint, "AWS_REGION": options.region}
    return {name: value for name, value in named.items() if value}


def env_s3_options() -> S3Options:
    """The environment's S3 settings with this process's retry budget. A request may sit silent for an eighth of the
    budget (curl's low-speed time: a slow large upload is not cut) so that a hung endpoint is given up on, and
    reported, within the budget; pyarrow's attempts stay few, the budget's loop does the waiting."""
    return S3Options(
        endpoint=os.environ.get("AWS_ENDPOINT_URL_S3") or _endpoint or os.environ.get("AWS_ENDPOINT_URL"),
        region=os.environ.get("AWS_REGION") or _region or os.environ.get("AWS_DEFAULT_REGION"),
        access_key_id=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        session_token=os.environ.get("AWS_SESSION_TOKEN"),
        request_timeout=min(30.0, max(2.0, _retry_seconds / 8)),
        retry_seconds=_retry_seconds,
    )


@lru_cache(maxsize=64)
def _s3_filesystem(options: S3Options) -> pafs.S3FileSystem:
    kwargs: dict[str, Any] = {"region": options.region or "us-east-1"}
    if options.endpoint:
        parsed = urlparse(options.endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    if options.access_key_id and options.secret_access_key:
        kwargs.update(
            access_key=options.access_key_id, secret_key=options.secret_access_key, session_token=options.session_token
        )
    # pyarrow's own retries: the AWS SDK's default strategy (exponential backoff from 25 ms). Not its "standard"
    # one: that one stops retrying once a client-wide quota (500 tokens, 5 per retry; the AWS SDKs' "standard"
    # retry mode) is spent, which a store shedding load for a while spends, and it waited ~3x longer per 503 here.
    kwargs["retry_strategy"] = pafs.AwsDefaultS3RetryStrategy(max_attempts=options.max_attempts)
    kwargs["connect_timeout"] = options.connect_timeout
    kwargs["request_timeout"] = options.request_timeout
    return _S3FileSystem(options, **kwargs)


class _S3FileSystem(pafs.S3FileSystem):
    """pyarrow's S3FileSystem whose pickled copies are made from the same options. Ray Train pickles the filesystem
    it is given into its controller and workers, and pyarrow's own `__reduce__` leaves out the retry strategy (its
    copies got the default 3 attempts: a 30%-503 store failed the demo's first checkpoint upload)."""

    def __init__(self, options: S3Options, **kwargs: Any):
        super().__init__(**kwargs)
        self.graft_options = options

    def __reduce__(self):
        return _s3_filesystem, (self.graft_options,)


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def filesystem(uri: str, options: S3Options | None = None) -> tuple[pafs.FileSystem, str]:
    """The filesystem for a URI and the path inside it (`bucket/key` for S3, absolute for local).

    `options` replaces the environment's S3 settings (endpoint, region, keys) for this call."""
    if is_s3(uri):
        return _s3_filesystem(options or env_s3_options()), uri[len("s3://") :].rstrip("/")
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI with '/' (local paths too)."""
    if is_s3(uri) or uri.startswith("file://"):
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


#: What pyarrow (the AWS SDK underneath) says for a fault worth retrying: a 5xx answer, throttling, a dropped or
#: refused connection, a request that timed out. Access denied, a missing bucket or key are not retried.
_TRANSIENT = re.compile(
    r"HTTP status 5\d\d|SLOW_DOWN|SlowDown|THROTTL|Throttl|SERVICE_UNAVAILABLE|INTERNAL_FAILURE|InternalError|"
    r"NETWORK_CONNECTION|REQUEST_TIMEOUT|curlCode|Timeout|timed out|Connection reset|Broken pipe"
)


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and bool(_TRANSIENT.search(str(exc)))


def _call(op: str, uri: str, options: S3Options | None, fn: Callable[[pafs.FileSystem, str], Any]) -> Any:
    """`fn(filesystem, path)` for `uri`, retried on transient S3 faults within the options' budget (see the module
    docstring). Errors come out as StorageError (FileNotFoundError as it is)."""
    if is_s3(uri):
        options = options or env_s3_options()  # read from the environment once per operation
    fs, path = filesystem(uri, options)
    try:
        if options is None or options.retry_seconds <= 0:  # local storage, or a caller with its own deadline
            return fn(fs, path)
        return retried(op, uri, options, lambda: fn(fs, path))
    except (FileNotFoundError, StorageError):
        raise
    except (OSError, ValueError) as exc:
        raise explain(uri, exc) from exc


def retried(op: str, uri: str, options: S3Options, attempt: Callable[[], Any],
            transient: Callable[[BaseException], bool] = _transient) -> Any:
    """`attempt()`, retried while it fails with a `transient` fault, for `options.retry_seconds`; a silent endpoint
    reported after WARN_AFTER_S; after the budget, StorageError naming `op`, `uri` and the endpoint. For S3 calls
    made with another client (the lease's botocore), with that client's idea of `transient`."""
    endpoint = options.endpoint or "AWS S3"
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


def read_bytes(uri: str, options: S3Options | None = None) -> bytes:
    """Read a whole object. Raises FileNotFoundError when it does not exist, StorageError otherwise (a
    missing bucket included: "no ledger yet" and "wrong bucket" must not look alike)."""

    def read(fs: pafs.FileSystem, path: str) -> bytes:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            if is_s3(uri) and fs.get_file_info(path.split("/", 1)[0]).type == pafs.FileType.NotFound:
                raise StorageError(uri, "bucket does not exist")
            raise FileNotFoundError(uri)
        if not is_s3(uri):
            with fs.open_input_stream(path) as f:
                return f.read()
        return _read_s3_whole(fs, path, info)

    return _call("read", uri, options, read)


_CONSISTENT_READ_TRIES = 8


def _read_s3_whole(fs: pafs.FileSystem, path: str, info: pafs.FileInfo) -> bytes:
    """One version of an S3 object, whole, even while a writer replaces it.

    pyarrow reads an object as one ranged GET sized by an earlier HEAD, so an object replaced in between by a
    longer version comes back as that version cut to the old length. The read counts only when the object's
    size and modification time are the same before and after it (and the length matches); otherwise it is
    read again."""
    before = info
    for _ in range(_CONSISTENT_READ_TRIES):
        with fs.open_input_stream(path) as f:
            data = f.read()
        after = fs.get_file_info(path)
        if after.type == pafs.FileType.NotFound:
            raise FileNotFoundError(path)
        if before.size == after.size == len(data) and before.mtime == after.mtime:
            return data
        before = after
    raise OSError(f"s3://{path} kept changing while it was read ({_CONSISTENT_READ_TRIES} tries)")


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object, all or nothing: an interrupted write leaves the previous version (or no object)."""

    def write(fs: pafs.FileSystem, path: str) -> None:
        if is_s3(uri):
            # pyarrow completes an S3 upload with what it was given whenever the stream closes, an exception's
            # included, and cannot abort one: so the complete body is ready before the stream opens and goes in one
            # write, and SIGTERM / Ctrl-C wait for close() (signals.held).
            with signals.held(), fs.open_output_stream(path) as f:
                f.write(data)
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


def read_json(uri: str, options: S3Options | None = None) -> Any:
    return json.loads(read_bytes(uri, options))


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True).encode())


def exists(uri: str) -> bool:
    return _call("check", uri, None, lambda fs, path: fs.get_file_info(path).type != pafs.FileType.NotFound)


def is_dir(uri: str) -> bool:
    """Whether a URI is a folder: a local directory, or an S3 prefix with objects below it."""
    return _call("check", uri, None, lambda fs, path: fs.get_file_info(path).type == pafs.FileType.Directory)


def list_dir(uri: str, recursive: bool = False, options: S3Options | None = None) -> list[str]:
    """URIs of the files below a prefix (empty when it does not exist)."""

    def listing(fs: pafs.FileSystem, path: str) -> list[str]:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
        return [posixpath.relpath(i.path, path) for i in infos if i.type == pafs.FileType.File]

    base = uri.rstrip("/")
    return sorted(join(base, *rel.split("/")) for rel in _call("list", uri, options, listing))


def ray_storage(uri: str) -> tuple[str, pafs.FileSystem | None]:
    """`(storage_path, storage_filesystem)` for Ray Train's RunConfig.

    With an explicit S3 filesystem Ray wants the path without a scheme (`bucket/prefix`)."""
    if is_s3(uri):
        # Ray Train reads and writes checkpoints through this filesystem itself, outside `_call`'s retries: pyarrow's
        # own attempts are all the retrying it gets, so it gets more of them (at 30% 503s, 0.3**10 per request).
        fs, path = filesystem(uri, replace(env_s3_options(), max_attempts=RAY_ATTEMPTS))
        return path, fs
    _, path = filesystem(uri)
    return path, None


#: pyarrow's attempts per request on the filesystem Ray Train is given (`ray_storage`).
RAY_ATTEMPTS = 10
