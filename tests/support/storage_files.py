"""Whole folders to and from object storage, for tests that stage data sets or read back checkpoints
(built on graft.storage's per-file functions, which is all production code needs)."""

from __future__ import annotations

from pathlib import Path

from graft import storage


def upload_dir(local_dir: str | Path, uri: str) -> None:
    """Copy a local folder to a URI (each file written atomically)."""
    local_dir = Path(local_dir)
    for file in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        storage.write_bytes(storage.join(uri, *file.relative_to(local_dir).parts), file.read_bytes())


def download_dir(uri: str, local_dir: str | Path) -> Path:
    """Copy everything under a URI into a local folder."""
    local_dir = Path(local_dir)
    prefix = uri.rstrip("/")
    for file_uri in storage.list_dir(prefix, recursive=True):
        rel = file_uri[len(prefix) :].lstrip("/")
        target = local_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(storage.read_bytes(file_uri))
    return local_dir
