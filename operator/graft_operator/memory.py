"""What the operator remembers between handler calls, held in kopf's `memo` (one `Memory` per operator process).

kopf's own index (`handlers.rayjobs`) keeps the RayJobs the watch has seen; this object keeps what the watch
cannot: the status as this process last wrote it (the watch lags behind our own writes), one lock per job so two
writers never interleave, the ledger reads in flight and the mirror loop.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

import kopf

from graft.api.models import API_VERSION, KIND
from graft_operator import client, findings, ledgers, metrics, status
from graft_operator.conditions import Reason


def ref(body: Any) -> tuple[str, str, str]:
    """(uid, namespace, name) of a TransferJob body."""
    meta = body["metadata"]
    return meta["uid"], meta.get("namespace") or "", meta["name"]


def log_ref(body: Any) -> dict[str, Any]:
    """`extra` for a log line about a job: kopf's JSON formatter puts it under "object", like its own lines."""
    meta = body["metadata"]
    return {"k8s_ref": {"apiVersion": API_VERSION, "kind": KIND, "name": meta.get("name"), "uid": meta.get("uid"),
                        "namespace": meta.get("namespace")}}


def event(body: Any, type_: str, reason: str, message: str) -> None:
    """Post an Event on the job (kopf.event, not kopf.info: posting.level keeps kopf's own chatter out)."""
    kopf.event(body, type=type_, reason=reason, message=message[:1000])


class Standing(Enum):
    """Where a job stands by its stored status alone (what an operator restart finds): the one place that reads it."""

    NEW = "new"  # nothing created, nothing refused
    REFUSED = "refused"  # Failed without a RayJob (InvalidSpec): the next spec change is validated again
    STARTED = "started"  # its RayJob is named (exists, or is about to)
    FINISHED = "finished"  # started and written Succeeded/Failed: the run's final state

    @classmethod
    def of(cls, current: dict[str, Any]) -> Standing:
        # A refused spec's Failed/InvalidSpec is not FINISHED even when it names a RayJob: it belongs to the generation
        # that was refused, and a fixed spec (a new generation) starts the job then (issue 24).
        if current.get("rayJobName") and current.get("reason") != Reason.INVALID_SPEC:
            return cls.FINISHED if status.is_terminal(current) else cls.STARTED
        if current.get("reason") == Reason.INVALID_SPEC or status.is_terminal(current):
            return cls.REFUSED
        return cls.NEW

    @property
    def started(self) -> bool:
        return self in (Standing.STARTED, Standing.FINISHED)


class Mirror(Protocol):
    """What the start and spec-change handlers hand a job over to: the mirror loop (`supervisor.Supervisor`)."""

    def follower(self, uid: str) -> Any: ...
    def follow_new(self, body: dict[str, Any], rayjob: dict[str, Any]) -> None: ...
    def observe(self, body: dict[str, Any]) -> None: ...
    def kick(self, uid: str) -> None: ...
    def drop(self, uid: str) -> None: ...


@dataclass
class Memory:
    api: client.Kube
    ledger_timeout: float = ledgers.DEFAULT_TIMEOUT  # seconds a ledger read may take before the status says so
    #: The pod security exceptions `spec.pod` may ask for (`graft operator --allow`; graft/api/podsecurity.py).
    pod_security_allow: frozenset[str] = frozenset()
    #: The Ray pods' image for jobs with no `spec.image` (`graft operator --trainer-image`); None: DEFAULT_IMAGE.
    trainer_image: str | None = None
    rayjobs: Any = None  # kopf's index of our RayJobs by (namespace, name), handed over by the startup handler
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)  # uid -> status as last written
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    supervisor: Mirror | None = None
    gone: set[str] = field(default_factory=set)  # uids of TransferJobs deleted while the watch was lost
    #: RayJobs (by uid) that kopf's index still holds but the API server no longer has: deleted while the watch was
    #: away, which kopf's listing again does not tell its index (it drops an entry on a DELETED event only).
    vanished: set[str] = field(default_factory=set)
    reads: ledgers.Reads = field(init=False)  # the ledger reads in flight, with the storage Secrets they use

    def __post_init__(self) -> None:
        self.reads = ledgers.Reads(self.api, timeout=self.ledger_timeout)

    def forget(self, uid: str) -> None:
        """Drop what is remembered of a deleted job."""
        self.statuses.pop(uid, None)
        self.locks.pop(uid, None)
        if self.supervisor is not None:
            self.supervisor.drop(uid)

    def known_status(self, body: Any) -> dict[str, Any]:
        """The job's status: what this process wrote last, else what the API server sent."""
        uid = body["metadata"]["uid"]
        if uid in self.statuses:
            return self.statuses[uid]
        return copy.deepcopy(dict(body.get("status") or {}))

    def seen_rayjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The RayJob as the watch last saw it (None when it has not seen one)."""
        if self.rayjobs is None:
            return None
        found = self.rayjobs.get((namespace, name))
        if found is None:
            return None
        return next((view for view in found if view["metadata"].get("uid") not in self.vanished), None)

    async def write_status(self, body: Any, new: dict[str, Any]) -> dict[str, Any]:
        """Patch the status with what changed (nothing when nothing did) and post an Event on a transition."""
        uid, namespace, name = ref(body)
        async with self.locks.setdefault(uid, asyncio.Lock()):
            current = self.known_status(body)
            patch = status.status_patch(current, new)
            if not patch:
                return current
            response = await self.api.merge_patch(KIND, name, namespace, {"status": patch}, status=True)
            if response is None:  # deleted meanwhile
                return current
            merged = {k: v for k, v in {**current, **patch}.items() if v is not None}
            self.statuses[uid] = response.get("status") or merged
            metrics.STATUS_WRITES.inc()
            moved = status.transition(current, new)
            for posted in (moved, findings.event(current, new, moved)):
                if posted:
                    event(body, *posted)
            return self.statuses[uid]

