"""Object storage for checkpoints, features, the ledger and models: `s3://` and local paths.

Built on pyarrow.fs. S3 settings come from the environment, as in a RayJob pod whose credentials
arrive from a Secret: `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`), `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` / `AWS_DEFAULT_REGION`.

Writes are atomic: a reader sees the old object or the new one, never half of one. On S3 an object
becomes visible only when its upload completes; locally a temporary file is renamed into place.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs


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


def env_s3_options() -> S3Options:
    return S3Options(
        endpoint=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
        region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        access_key_id=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        session_token=os.environ.get("AWS_SESSION_TOKEN"),
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
    # Retries with backoff are pyarrow's own (AWS standard strategy); a few is enough for transient
    # errors without hiding a wrong endpoint for minutes.
    kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=options.max_attempts)
    kwargs["connect_timeout"] = options.connect_timeout
    kwargs["request_timeout"] = options.request_timeout
    return pafs.S3FileSystem(**kwargs)


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


def _explain(uri: str, exc: BaseException) -> StorageError:
    text = str(exc)
    lowered = text.lower()
    if "nosuchbucket" in lowered or "bucket does not exist" in lowered or "bucket not found" in lowered:
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


def read_bytes(uri: str, options: S3Options | None = None) -> bytes:
    """Read a whole object. Raises FileNotFoundError when it does not exist, StorageError otherwise (a
    missing bucket included: "no ledger yet" and "wrong bucket" must not look alike)."""
    fs, path = filesystem(uri, options)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            if is_s3(uri) and fs.get_file_info(path.split("/", 1)[0]).type == pafs.FileType.NotFound:
                raise StorageError(uri, "bucket does not exist")
            raise FileNotFoundError(uri)
        if not is_s3(uri):
            with fs.open_input_stream(path) as f:
                return f.read()
        return _read_s3_whole(fs, path, info)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise _explain(uri, exc) from exc


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
    """Write a whole object atomically."""
    fs, path = filesystem(uri)
    try:
        if is_s3(uri):
            # A single S3 PUT (or a completed multipart upload) is atomic for readers.
            with fs.open_output_stream(path) as f:
                f.write(data)
            return
        parent = posixpath.dirname(path)
        fs.create_dir(parent, recursive=True)
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
    except OSError as exc:
        raise _explain(uri, exc) from exc


def read_json(uri: str, options: S3Options | None = None) -> Any:
    return json.loads(read_bytes(uri, options))


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True).encode())


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError as exc:
        raise _explain(uri, exc) from exc


def is_dir(uri: str) -> bool:
    """Whether a URI is a folder: a local directory, or an S3 prefix with objects below it."""
    fs, path = filesystem(uri)
    try:
        return fs.get_file_info(path).type == pafs.FileType.Directory
    except OSError as exc:
        raise _explain(uri, exc) from exc


def list_dir(uri: str, recursive: bool = False, options: S3Options | None = None) -> list[str]:
    """URIs of the files below a prefix (empty when it does not exist)."""
    fs, path = filesystem(uri, options)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
    except OSError as exc:
        raise _explain(uri, exc) from exc
    base = uri.rstrip("/")
    out = []
    for info in infos:
        if info.type == pafs.FileType.File:
            rel = posixpath.relpath(info.path, path)
            out.append(join(base, *rel.split("/")))
    return sorted(out)


def ray_storage(uri: str) -> tuple[str, pafs.FileSystem | None]:
    """`(storage_path, storage_filesystem)` for Ray Train's RunConfig.

    With an explicit S3 filesystem Ray wants the path without a scheme (`bucket/prefix`)."""
    if is_s3(uri):
        fs, path = filesystem(uri)
        return path, fs
    _, path = filesystem(uri)
    return path, None
