"""The first time the emulated API server saw each fact about a job, from its change feed (`emulated_api`'s
`on_change`): (job, "added"), (job, "<TransferJob condition> <status>"), (job, "rayjob <jobDeploymentStatus>").
Shared by the hung-storage e2e test and benchmark, which time status transitions from it."""

from __future__ import annotations

import threading
import time
from typing import Any

TRANSFERJOBS = "transferjobs"
LABEL = "graft.dev/transferjob"  # the label graft_operator/builder.py puts on a TransferJob's RayJob


class ChangeFeed:
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.lock = threading.Lock()
        self.first: dict[tuple[str, str], float] = {}

    def __call__(self, t: float, kind: str, rt: Any, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        if meta.get("namespace") != self.namespace:
            return
        with self.lock:
            if rt.plural == TRANSFERJOBS:
                name = meta["name"]
                self.first.setdefault((name, "added"), t)
                for c in (obj.get("status") or {}).get("conditions") or []:
                    self.first.setdefault((name, f"{c['type']} {c['status']}"), t)
            elif rt.plural == "rayjobs":
                name = (meta.get("labels") or {}).get(LABEL)
                jds = (obj.get("status") or {}).get("jobDeploymentStatus")
                if name and jds:
                    self.first.setdefault((name, f"rayjob {jds}"), t)

    def wait(self, name: str, *facts: str, timeout: float) -> float | None:
        """Wait until every fact is seen: the time of the last of them, or None when not all came in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if all((name, f) in self.first for f in facts):
                    return max(self.first[(name, f)] for f in facts)
            time.sleep(0.02)
        return None

    def seen(self, name: str) -> list[str]:
        with self.lock:
            return sorted(f for n, f in self.first if n == name)

    def between(self, name: str, start: str, end: str) -> float | None:
        """Seconds from one fact to another, or None when either was not seen."""
        with self.lock:
            a, b = self.first.get((name, start)), self.first.get((name, end))
        return None if a is None or b is None else b - a
