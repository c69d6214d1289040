"""Storage schemes, one module each behind `base.Backend`, looked up by URI (`for_uri`).

Adding a scheme: a module here defining `BACKEND` (a `Backend` subclass instance), and its name in `_MODULES`.
"""

from __future__ import annotations

import importlib

from graft.storage_backends.base import SETTINGS, Backend, Settings

#: The object-store modules, by scheme; `local` (paths, `file://`) is the fallback and is not listed.
_MODULES = ("s3", "gcs")

_BACKENDS: tuple[Backend, ...] = tuple(importlib.import_module(f"{__name__}.{m}").BACKEND for m in _MODULES)
LOCAL: Backend = importlib.import_module(f"{__name__}.local").BACKEND


def for_uri(uri: str) -> Backend:
    """The backend that owns `uri`: an object store's by its scheme, else the local filesystem's."""
    return next((b for b in _BACKENDS if b.owns(uri)), LOCAL)


def for_endpoint(storage_uri: str) -> Backend:
    """The backend a job's `spec.storage.endpoint` and `region` are for: its storage's scheme, S3 when its storage is
    local (an endpoint then serves the job's s3:// data, as before gs:// existed)."""
    backend = for_uri(storage_uri)
    return backend if backend.remote else for_uri("s3://")


def remote_prefixes() -> tuple[str, ...]:
    """The object stores' URI prefixes (`s3://`, `gs://`)."""
    return tuple(b.prefix for b in _BACKENDS)


__all__ = ["LOCAL", "SETTINGS", "Backend", "Settings", "for_endpoint", "for_uri", "remote_prefixes"]
