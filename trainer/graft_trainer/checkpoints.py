"""Checkpoint manifests: what makes a checkpoint folder complete, and finding the newest complete one.

Every checkpoint folder Graft writes (`<root>/checkpoints/<run name>/epoch_NNNNN/`) gets a `manifest.json` written
after its other files: each file's name, size and sha256. A checkpoint is complete when every file the manifest
names is there with that size and hash and `state.pt` loads. A folder with no manifest was written by a Graft
from before manifests (or its writer died before the manifest): it counts as complete when its `state.pt` loads,
so old runs still resume.

Resuming reads the latest checkpoint; when it is incomplete (a write cut short, an object emptied by an
interrupted upload), it goes back to the newest complete one and says so in one line (`fallback_line`).
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from graft import storage

MANIFEST = "manifest.json"
STATE = "state.pt"
#: Checkpoint folder names: `epoch_NNNNN`, and `epoch_NNNNN-K` for an epoch redone after a fallback.
_FOLDER = re.compile(r"^epoch_(\d+)(?:-(\d+))?$")
_CHUNK = 1 << 20


class Incomplete(Exception):
    """A checkpoint folder that cannot be resumed from; the message says which file and why."""


def _entry(name: str, size: int, digest: str) -> dict[str, Any]:
    return {"name": name, "size": size, "sha256": digest}


def manifest_of_bytes(files: dict[str, bytes]) -> dict[str, Any]:
    """The manifest of files held in memory (name -> content)."""
    return {"version": 1, "files": [_entry(n, len(b), hashlib.sha256(b).hexdigest()) for n, b in sorted(files.items())]}


def _file_digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def manifest_of_dir(folder: str | Path) -> dict[str, Any]:
    """The manifest of the files in a local folder (its manifest.json, if any, left out)."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = [_entry(p.relative_to(folder).as_posix(), p.stat().st_size, _file_digest(p)) for p in files]
    return {"version": 1, "files": entries}


def write_manifest(folder_uri: str, manifest: dict[str, Any]) -> None:
    """Write `manifest.json` into a checkpoint folder: last, after the files it names."""
    storage.write_json(storage.join(folder_uri, MANIFEST), manifest)


def _parse_manifest(data: bytes) -> list[dict[str, Any]]:
    try:
        files = json.loads(data)["files"]
        return [{"name": str(e["name"]), "size": int(e["size"]), "sha256": str(e["sha256"])} for e in files]
    except (ValueError, KeyError, TypeError) as exc:
        raise Incomplete(f"{MANIFEST}: not a valid manifest ({'empty' if not data else type(exc).__name__})") from None


def _check(entries: list[dict[str, Any]], stat: Callable[[str], int | None], digest: Callable[[str], str]) -> None:
    """Raise Incomplete for the first file the manifest names that is missing, of another size, or another hash."""
    for e in entries:
        size = stat(e["name"])
        if size is None:
            raise Incomplete(f"{e['name']}: missing, manifest says {e['size']} bytes")
        if size != e["size"]:
            raise Incomplete(f"{e['name']}: {size} bytes, manifest says {e['size']}")
        if digest(e["name"]) != e["sha256"]:
            raise Incomplete(f"{e['name']}: sha256 differs from the manifest's")


def _torch_load(source: Any) -> dict[str, Any]:
    try:
        return torch.load(source, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise Incomplete(f"{STATE}: missing") from None
    except Exception as exc:  # a cut-short zip or pickle fails in many ways (EOFError, RuntimeError, ...)
        raise Incomplete(f"{STATE}: cannot be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
                         ) from None


def load_dir(folder: str | Path) -> dict[str, Any]:
    """`state.pt` of a local checkpoint folder, checked against its manifest. Raises Incomplete."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if manifest.exists():
        def stat(name: str) -> int | None:
            return (folder / name).stat().st_size if (folder / name).is_file() else None

        _check(_parse_manifest(manifest.read_bytes()), stat, lambda name: _file_digest(folder / name))
    return _torch_load(folder / STATE)


def load_uri(folder_uri: str) -> dict[str, Any]:
    """`state.pt` of a checkpoint folder in storage (read whole), checked against its manifest. Raises
    Incomplete (StorageError when the storage itself fails)."""
    try:
        entries = _parse_manifest(storage.read_bytes(storage.join(folder_uri, MANIFEST)))
    except FileNotFoundError:
        entries = None
    files: dict[str, bytes | None] = {}

    def read(name: str) -> bytes | None:
        if name not in files:
            try:
                files[name] = storage.read_bytes(storage.join(folder_uri, name))
            except FileNotFoundError:
                files[name] = None
        return files[name]

    if entries is not None:
        _check(entries, lambda n: None if read(n) is None else len(read(n)),
               lambda n: hashlib.sha256(read(n)).hexdigest())
    data = read(STATE)
    if data is None:
        raise Incomplete(f"{STATE}: missing")
    return _torch_load(io.BytesIO(data))


def folder_order(name: str) -> tuple[int, int] | None:
    """Sort key of a checkpoint folder name (epoch, redo number); None for other names."""
    m = _FOLDER.match(name)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def folders(run_uri: str) -> list[str]:
    """The checkpoint folder names under a run's checkpoint folder, newest (highest epoch) first."""
    names = set()
    base = run_uri.rstrip("/")
    for uri in storage.list_dir(run_uri, recursive=True):
        first = uri[len(base) + 1:].split("/", 1)[0]
        if folder_order(first) is not None:
            names.add(first)
    return sorted(names, key=folder_order, reverse=True)


def free_name(name: str, taken: set[str]) -> str:
    """`name`, or `name-K` with the smallest K not in `taken`: an epoch redone after a fallback gets a folder of its
    own, so that Ray Train's bookkeeping of the incomplete one (and its later deletion) never touches it."""
    if name not in taken:
        return name
    k = 1
    while f"{name}-{k}" in taken:
        k += 1
    return f"{name}-{k}"


def fallback_line(incomplete: str, problem: str, resumed: str | None) -> str:
    """The one line that says a checkpoint was passed over, and what the stage resumes from instead."""
    head = f"checkpoint {incomplete} is incomplete ({problem})"
    if resumed is None:
        return f"{head} and no earlier checkpoint is complete: starting the stage from its first epoch"
    return f"{head}: resuming from {resumed}"


def newest_complete(run_uri: str, load: Callable[[str], dict[str, Any]], skip: set[str]
                    ) -> tuple[str, dict[str, Any]] | None:
    """(URI, state) of the newest checkpoint under `run_uri` that `load` accepts, the folder names in `skip` left
    out; None when none is complete."""
    for name in folders(run_uri):
        if name in skip:
            continue
        uri = storage.join(run_uri, name)
        try:
            return uri, load(uri)
        except Incomplete:
            continue
    return None


def folder_name(uri_or_path: str) -> str:
    return posixpath.basename(uri_or_path.rstrip("/"))
