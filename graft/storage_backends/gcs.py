"""`gs://`: Google Cloud Storage through pyarrow's GcsFileSystem (google-cloud-cpp underneath).

Credentials: Google's Application Default Credentials, which google-cloud-cpp looks up itself (GKE Workload
Identity's metadata server, a service-account JSON key named by `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's user
credentials); Graft reads no keys from a Secret for gs://. An endpoint (`spec.storage.endpoint`, else the
`STORAGE_EMULATOR_HOST` the Google client libraries read) means an emulator such as fake-gcs-server, reached
anonymously over the endpoint's scheme, as google-cloud-storage does with `STORAGE_EMULATOR_HOST`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from graft.storage_backends.base import SETTINGS, Backend

#: The variable Google's client libraries read for an emulator's address (`host:port` or a URL).
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"

# Bucket naming rules, https://cloud.google.com/storage/docs/buckets#naming: lower-case letters, digits, '-', '_'
# and '.'; start and end with a letter or digit; 3-63 characters, up to 222 with dots when each dot-separated
# component is at most 63; not an IP address in dotted-decimal notation; not beginning with "goog", not containing
# "google" or close misspellings (the docs' example: "g00gle").
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]*[a-z0-9]$")
_GOOGLE = re.compile(r"g[o0][o0]g[l1]e")


@dataclass(frozen=True)
class GcsOptions:
    """GCS settings. `endpoint` None: Google Cloud Storage with the default credentials; else an emulator, reached
    anonymously. `request_seconds` is google-cloud-cpp's own retry time per request (its `retry_time_limit`)."""

    endpoint: str | None = None
    request_seconds: float = 15.0
    #: How long graft.storage retries an operation after google-cloud-cpp's own retries fail with a transient error.
    retry_seconds: float = 0.0

    @property
    def where(self) -> str:
        """The endpoint in messages."""
        return self.endpoint or "Google Cloud Storage"


def env_gcs_options() -> GcsOptions:
    """The job's endpoint (`spec.storage.endpoint` for gs:// storage), else the environment's emulator, with this
    process's retry budget."""
    endpoint, _ = SETTINGS.job_endpoint("gs")
    budget = SETTINGS.retry_seconds
    return GcsOptions(endpoint=endpoint or os.environ.get(EMULATOR_ENV) or None,
                      request_seconds=min(30.0, max(2.0, budget / 8)), retry_seconds=budget)


@lru_cache(maxsize=64)
def _gcs_filesystem(options: GcsOptions) -> pafs.GcsFileSystem:
    kwargs: dict[str, Any] = {"retry_time_limit": timedelta(seconds=options.request_seconds)}
    if options.endpoint:
        parsed = urlparse(options.endpoint if "://" in options.endpoint else f"http://{options.endpoint}")
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme, anonymous=True)
    return pafs.GcsFileSystem(**kwargs)


class GcsBackend(Backend):
    scheme = "gs"
    service = "google"

    def env_options(self) -> GcsOptions:
        return env_gcs_options()

    def filesystem(self, uri: str, options: GcsOptions | None) -> tuple[pafs.FileSystem, str]:
        return _gcs_filesystem(options or env_gcs_options()), uri[len(self.prefix) :].rstrip("/")

    def ray_storage(self, uri: str) -> tuple[str, pafs.FileSystem | None]:
        # Ray Train writes checkpoints through this filesystem outside graft.storage's retries: google-cloud-cpp's
        # own retry time is all it gets, so it gets the whole budget (pickled copies keep it: pyarrow's __reduce__
        # carries every GcsOptions field).
        options = env_gcs_options()
        fs, path = self.filesystem(uri, GcsOptions(options.endpoint, request_seconds=max(options.retry_seconds, 2.0)))
        return path, fs

    def worker_env(self) -> dict[str, str]:
        return self.pod_env(env_gcs_options().endpoint, None)

    def pod_env(self, endpoint: str | None, region: str | None) -> dict[str, str]:
        return {EMULATOR_ENV: endpoint} if endpoint else {}

    def check_uri(self, uri: str) -> None:
        bucket = uri[len(self.prefix) :].split("/", 1)[0]
        if not bucket:
            raise ValueError(f"{uri!r} has no bucket; expected gs://<bucket>/<prefix>")
        parts = bucket.split(".")
        if (not _BUCKET.match(bucket) or len(bucket) < 3 or len(bucket) > (222 if len(parts) > 1 else 63)
                or any(not p or len(p) > 63 for p in parts) or re.match(r"^\d+\.\d+\.\d+\.\d+$", bucket)
                or bucket.startswith("goog") or _GOOGLE.search(bucket)):
            raise ValueError(
                f"{bucket!r} in {uri!r} is not a valid GCS bucket name: 3-63 lower-case letters, digits, '-', '_' "
                "and '.' (222 with dots, 63 between them), starting and ending with a letter or digit, not an IP "
                "address, not starting with 'goog' or containing 'google'"
            )

    def options(self, endpoint: str | None, region: str | None, secret: Any = None, deadline: float | None = None,
                from_env: bool = False) -> GcsOptions:
        env = env_gcs_options() if from_env else GcsOptions()
        return GcsOptions(endpoint=endpoint or env.endpoint,
                          **({"request_seconds": deadline} if deadline is not None else {}))


BACKEND = GcsBackend()
