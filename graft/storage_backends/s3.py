"""`s3://`: AWS S3 and S3-compatible stores (MinIO, ...) through pyarrow's S3FileSystem.

Settings come from the environment, as in a RayJob pod whose credentials arrive from a Secret: `AWS_ENDPOINT_URL`
(or `AWS_ENDPOINT_URL_S3`), `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` /
`AWS_DEFAULT_REGION`; the job's own endpoint and region (`spec.storage`) come through `graft.storage.use_endpoint`
and reach Ray's workers as the AWS variables (`worker_env`). With no keys the AWS SDK's default chain applies.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from graft.storage_backends.base import SETTINGS, Backend

#: pyarrow's attempts per request on the filesystem Ray Train is given (`ray_storage`).
RAY_ATTEMPTS = 10

# https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


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

    @property
    def where(self) -> str:
        """The endpoint in messages."""
        return self.endpoint or "AWS S3"


def env_s3_options() -> S3Options:
    """The environment's S3 settings with this process's retry budget. A request may sit silent for an eighth of the
    budget (curl's low-speed time: a slow large upload is not cut) so that a hung endpoint is given up on, and
    reported, within the budget; pyarrow's attempts stay few, the budget's loop does the waiting."""
    endpoint, region = SETTINGS.job_endpoint("s3")
    budget = SETTINGS.retry_seconds
    return S3Options(
        endpoint=os.environ.get("AWS_ENDPOINT_URL_S3") or endpoint or os.environ.get("AWS_ENDPOINT_URL"),
        region=os.environ.get("AWS_REGION") or region or os.environ.get("AWS_DEFAULT_REGION"),
        access_key_id=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        session_token=os.environ.get("AWS_SESSION_TOKEN"),
        request_timeout=min(30.0, max(2.0, budget / 8)),
        retry_seconds=budget,
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
    # An object smaller than a part (10 MB; the ledger, a manifest, a small checkpoint) goes up as one PutObject
    # when its stream closes, not as a multipart upload's three requests (s3fs.h, `allow_delayed_open`: "may also
    # allow usage of more efficient S3 APIs for small files"); a missing bucket then shows at close, in write_bytes.
    kwargs["allow_delayed_open"] = True
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


class S3Backend(Backend):
    scheme = "s3"
    service = "aws"
    lease = "s3"

    def env_options(self) -> S3Options:
        return env_s3_options()

    def filesystem(self, uri: str, options: S3Options | None) -> tuple[pafs.FileSystem, str]:
        return _s3_filesystem(options or env_s3_options()), uri[len(self.prefix) :].rstrip("/")

    def ray_storage(self, uri: str) -> tuple[str, pafs.FileSystem | None]:
        # Ray Train reads and writes checkpoints through this filesystem itself, outside graft.storage's retries:
        # pyarrow's own attempts are all the retrying it gets, so it gets more of them (at 30% 503s, 0.3**10 per
        # request).
        fs, path = self.filesystem(uri, replace(env_s3_options(), max_attempts=RAY_ATTEMPTS))
        return path, fs

    def worker_env(self) -> dict[str, str]:
        options = env_s3_options()
        return self.pod_env(options.endpoint, options.region)

    def check_uri(self, uri: str) -> None:
        bucket = uri[len(self.prefix) :].split("/", 1)[0]
        if not bucket:
            raise ValueError(f"{uri!r} has no bucket; expected s3://<bucket>/<prefix>")
        if (not _BUCKET.match(bucket) or ".." in bucket or re.match(r"^\d+\.\d+\.\d+\.\d+$", bucket)
                or bucket.startswith("xn--") or bucket.endswith("-s3alias")):
            raise ValueError(
                f"{bucket!r} in {uri!r} is not a valid S3 bucket name: 3-63 lower-case letters, digits, '.' and "
                "'-', starting and ending with a letter or digit"
            )

    def env_credentials(self) -> bool:
        return bool(os.environ.get("AWS_ACCESS_KEY_ID"))

    def secret_keys(self, ref: Mapping[str, Any]) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": ref.get("accessKeyIdKey") or "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY": ref.get("secretAccessKeyKey") or "AWS_SECRET_ACCESS_KEY"}

    def pod_env(self, endpoint: str | None, region: str | None) -> dict[str, str]:
        named = {"AWS_ENDPOINT_URL": endpoint, "AWS_REGION": region}
        return {name: value for name, value in named.items() if value}

    def options(self, endpoint: str | None, region: str | None, secret: Mapping[str, str] | None = None,
                deadline: float | None = None, from_env: bool = False) -> S3Options:
        env = env_s3_options() if from_env else S3Options()
        keys = dict(secret or {})
        limits: dict[str, Any] = {}
        if deadline is not None:
            limits = {"connect_timeout": deadline, "request_timeout": deadline, "max_attempts": 1}
        return S3Options(
            endpoint=endpoint or env.endpoint, region=region or env.region,
            access_key_id=keys.get("AWS_ACCESS_KEY_ID", env.access_key_id),
            secret_access_key=keys.get("AWS_SECRET_ACCESS_KEY", env.secret_access_key),
            session_token=None if keys else env.session_token, **limits,
        )



BACKEND = S3Backend()
