"""Local paths and `file://` URIs: this machine's filesystem (on a cluster each pod's own, unless shared)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from graft.storage_backends.base import Backend


class LocalBackend(Backend):
    scheme = "file"
    remote = False
    service = "local"
    lease = "local"

    def owns(self, uri: str) -> bool:
        return True  # the fallback: whatever no object store owns is a path

    def filesystem(self, uri: str, options: Any) -> tuple[pafs.FileSystem, str]:
        path = uri[len(self.prefix) :] if uri.startswith(self.prefix) else uri
        return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())

    def ray_storage(self, uri: str) -> tuple[str, pafs.FileSystem | None]:
        return self.filesystem(uri, None)[1], None

    def endpoint_label(self, endpoint: str | None, region: str | None) -> str:
        return "local"

    def from_ray_path(self, path: str) -> str:
        return path


BACKEND = LocalBackend()
