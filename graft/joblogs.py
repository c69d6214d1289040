"""A job's logs in its storage, kept after the Ray cluster is gone: `<root>/logs/<stage>/driver.log` (the process
that runs the stages: the RayJob's submitter, or `graft run`) and `<root>/logs/<stage>/worker-<rank>.log` (each Ray
Train worker of a training stage).

The trainer writes them as the job runs (`graft_trainer.logship`); `graft logs` reads them here, from local or S3
storage, and the operator puts `logs_uri(root)` in the TransferJob's status.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from graft import storage
from graft.ledger import LEDGER_FILE

LOGS_DIR = "logs"
DRIVER = "driver"
_NAME = re.compile(r"^(driver|worker-(\d+))\.log$")


def logs_uri(root: str) -> str:
    """Where a job's logs are: `<root>/logs`."""
    return storage.join(root, LOGS_DIR)


def log_uri(root: str, stage: str, name: str) -> str:
    """One process's log for one stage; `name` is `driver` or `worker-<rank>`."""
    return storage.join(root, LOGS_DIR, stage, f"{name}.log")


def pointer(root: str) -> str | None:
    """The `logs: ...` line `graft status` and `graft run` print under a job, None when it has no logs yet."""
    return f"logs: {logs_uri(root)}   (graft logs {root})" if find(root) else None


def job_root_of(target: str) -> str:
    """The job root for a run folder, a job URI, or its `logs` folder. A folder that is itself a job root (it holds a
    ledger or a `logs` folder: a local job named `logs` runs in `graft-runs/logs`) is taken as it is."""
    trimmed = target.rstrip("/")
    if not trimmed.endswith("/" + LOGS_DIR):
        return trimmed
    if storage.exists(storage.join(trimmed, LEDGER_FILE)) or storage.is_dir(logs_uri(trimmed)):
        return trimmed
    return root_of_logs(trimmed)


def root_of_logs(logs: str) -> str:
    """The job root of a job's `logs` folder URI (`status.logsURI` names one): no storage call."""
    trimmed = logs.rstrip("/")
    return trimmed[: -len(LOGS_DIR) - 1] if trimmed.endswith("/" + LOGS_DIR) else trimmed


@dataclass(frozen=True)
class LogFile:
    uri: str
    stage: str
    name: str  # "driver" or "worker-<rank>"
    rank: int | None  # None for the driver

    @property
    def label(self) -> str:
        return f"{self.stage}/{self.name}"


def find(root: str, *, stage: str | None = None, worker: int | None = None, order: list[str] | None = None,
         options: storage.S3Options | None = None) -> list[LogFile]:
    """The job's log files: in `order`'s stage order (the spec's), then any other stage by name; in a stage the
    driver first, then the workers by rank. `stage` (any case) and `worker` (a rank) narrow the list."""
    base = logs_uri(root)
    found = []
    for uri in storage.list_dir(base, recursive=True, options=options):
        parts = uri[len(base) + 1:].split("/")
        match = _NAME.match(parts[-1]) if len(parts) == 2 else None
        if match is None:
            continue
        rank = int(match.group(2)) if match.group(2) is not None else None
        found.append(LogFile(uri, parts[0], match.group(1), rank))
    if stage is not None:
        found = [f for f in found if f.stage.lower() == stage.lower()]
    if worker is not None:
        found = [f for f in found if f.rank == worker]
    position = {s: i for i, s in enumerate(order or [])}
    return sorted(found, key=lambda f: (position.get(f.stage, len(position)), f.stage, f.rank is not None, f.rank or 0))


def read(f: LogFile, options: storage.S3Options | None = None) -> str:
    return storage.read_bytes(f.uri, options).decode("utf-8", errors="replace")


def follow(list_files: Callable[[], list[LogFile]], finished: Callable[[], bool], *, poll: float = 1.0,
           options: storage.S3Options | None = None) -> Iterator[tuple[LogFile, str]]:
    """`(file, new text)` as the logs grow, until `finished()` says the job is over and one last look found
    nothing new. A file that became shorter (cut when it outgrew its cap) is read again from its start."""
    seen: dict[str, int] = {}
    last_look = False
    while True:
        done = finished()
        grew = False
        for f in list_files():
            try:
                text = read(f, options)
            except (FileNotFoundError, storage.StorageError):
                continue  # replaced while we listed it: the next look reads it
            start = seen.get(f.uri, 0)
            if len(text) < start:
                start = 0
            if len(text) > start:
                grew = True
                seen[f.uri] = len(text)
                yield f, text[start:]
        if done and (last_look or not grew):
            return
        last_look = done
        time.sleep(poll)
