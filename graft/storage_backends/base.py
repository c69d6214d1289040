"""The interface one storage scheme implements (`Backend`), and the process-wide settings every scheme reads.

A backend turns a URI of its scheme into a pyarrow filesystem and a path, says how Ray Train and Ray's worker
processes reach it, which settings a job's `spec.storage` and credentials Secret give it, and how the job's lease
object is written there. `graft.storage` does the rest (all-or-nothing writes, retries, errors in words) the same
way for every scheme.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow.fs as pafs


@dataclass
class Settings:
    """What this process was told about the job's storage (`graft.storage.configure` / `use_endpoint`)."""

    #: How long environment-configured operations retry transient faults (`spec.storage.retrySeconds`).
    retry_seconds: float = 120.0
    #: The job's endpoint and region (`spec.storage`), for the scheme of its storage URI only.
    scheme: str | None = None
    endpoint: str | None = None
    region: str | None = None

    def job_endpoint(self, scheme: str) -> tuple[str | None, str | None]:
        """The job's endpoint and region when its storage is on `scheme`, else (None, None)."""
        return (self.endpoint, self.region) if scheme == self.scheme else (None, None)


SETTINGS = Settings()


class Backend:
    """One storage scheme. Subclasses set `scheme` and override what differs from a local filesystem."""

    #: The URI scheme without `://` ("s3", "gs"); a local backend owns every URI no other backend owns.
    scheme: ClassVar[str]
    #: Whether every pod of a cluster reaches the same objects (object storage) rather than its own disk.
    remote: ClassVar[bool] = True
    #: The service's name in messages when no endpoint is set ("AWS S3").
    service: ClassVar[str] = ""
    #: How the job's lease object is written there (graft/leasestore.py `STORES`): "read-back" (write, then read
    #: back) works on any object store; "s3" uses S3's conditional writes, "local" flock.
    lease: ClassVar[str] = "read-back"

    @property
    def prefix(self) -> str:
        return f"{self.scheme}://"

    def owns(self, uri: str) -> bool:
        return uri.startswith(self.prefix)

    def env_options(self) -> Any:
        """This process's settings for the scheme (the environment's and the job's), None for local storage."""
        return None

    def filesystem(self, uri: str, options: Any) -> tuple[pafs.FileSystem, str]:
        """The pyarrow filesystem for `uri` and the path in it (`bucket/key` for object stores)."""
        raise NotImplementedError

    def ray_storage(self, uri: str) -> tuple[str, pafs.FileSystem | None]:
        """`(storage_path, storage_filesystem)` for Ray Train's RunConfig."""
        fs, path = self.filesystem(uri, self.env_options())
        return path, fs

    def worker_env(self) -> dict[str, str]:
        """Environment variables that carry the job's settings to the processes this one starts (Ray's workers)."""
        return {}

    def check_uri(self, uri: str) -> None:
        """Raise ValueError with one line when `uri` (of this scheme) cannot name an object (bucket rules)."""

    def env_credentials(self) -> bool:
        """Whether this process's environment carries its own keys for the scheme (a CLI then reads no Secret)."""
        return False

    def secret_keys(self, ref: Mapping[str, Any]) -> dict[str, str]:
        """The keys a credentials Secret (`spec.storage.credentialsSecret`, camelCase fields) must hold, by the
        environment variable the pods get each one as; empty when this scheme takes no keys from a Secret."""
        return {}

    def pod_env(self, endpoint: str | None, region: str | None) -> dict[str, str]:
        """The environment variables that carry a job's `spec.storage` endpoint and region to its Ray pods."""
        return {}

    def options(self, endpoint: str | None, region: str | None, secret: Mapping[str, str] | None = None,
                deadline: float | None = None, from_env: bool = False) -> Any:
        """Explicit settings for reading a job's storage from outside the job (the operator, `graft logs`): the
        spec's endpoint and region, the Secret's values by variable (`secret_keys`); with `deadline` (seconds) a silent
        endpoint is given up on a little after it, in one attempt; `from_env` fills what is missing from the
        environment's settings."""
        return None

    def endpoint_label(self, endpoint: str | None, region: str | None) -> str:
        """Which endpoint a job's reads go to, as one word or two (one hung server can take down its reads)."""
        return f"{self.scheme} {endpoint or self.service} {region or ''}".rstrip()


    def from_ray_path(self, path: str) -> str:
        """A URI for a path Ray Train reports (it drops the scheme when given a filesystem)."""
        return path if self.owns(path) else self.prefix + path.lstrip("/")
