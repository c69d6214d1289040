"""A TransferJob's child, its RayJob: create or adopt it, find it, delete it after its TTL. It carries an
ownerReference to the job, so deleting the job deletes it (and KubeRay the Ray cluster)."""

from __future__ import annotations

from typing import Any

import kopf

from graft.api.models import TransferJobSpec
from graft.ledger import seconds_since
from graft_operator import builder, client
from graft_operator.conditions import Reason
from graft_operator.memory import Memory, event, ref


async def create_or_adopt(mem: Memory, obj: dict[str, Any], owner_uid: str) -> tuple[dict[str, Any], bool]:
    """Create a child; when one of that name exists (409), adopt it. Returns (object, created)."""
    kind, namespace, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
    try:
        return await mem.api.create(obj), True
    except client.Conflict:
        pass
    existing = await mem.api.get(kind, name, namespace)
    if existing is None:
        raise kopf.TemporaryError(f"{kind} {name} was being deleted while it was created; retrying", delay=2)
    refs = existing.get("metadata", {}).get("ownerReferences") or []
    if any(r.get("uid") == owner_uid for r in refs):
        return existing, False
    if any(r.get("controller") for r in refs):
        raise kopf.PermanentError(f"{kind} {namespace}/{name} exists and belongs to another controller")
    # An orphan of this job's deterministic name (e.g. created before an operator crash lost track): adopt it.
    patched = await mem.api.merge_patch(kind, name, namespace, {"metadata": {
        "ownerReferences": refs + obj["metadata"]["ownerReferences"], "labels": obj["metadata"]["labels"]}})
    return patched or existing, False


async def create_rayjob(mem: Memory, body: Any, spec: TransferJobSpec) -> tuple[dict[str, Any], bool]:
    """Create (or adopt) the job's RayJob. Returns (RayJob, created)."""
    rayjob = builder.build_owned_rayjob(dict(body), builder.with_default_image(spec, mem.trainer_image))
    return await create_or_adopt(mem, rayjob, body["metadata"]["uid"])


def rayjob_seen(mem: Memory, follower: Any, namespace: str, name: str) -> dict[str, Any] | None:
    """The RayJob as the watch last saw it; until the watch has seen what we last wrote, what we wrote. None when
    neither (deleted, or the watch has not caught up: ask the API server)."""
    seen = mem.seen_rayjob(namespace, name)
    if seen is not None:
        follower.written_rayjob = None
        return seen
    return follower.written_rayjob


async def checked(mem: Memory, seen: dict[str, Any] | None, namespace: str, name: str) -> dict[str, Any] | None:
    """The RayJob as the API server has it now. A RayJob the watch had seen that is gone (or replaced) is marked
    vanished, so that kopf's index, which keeps it, is not believed again."""
    found = await mem.api.get("RayJob", name, namespace)
    uid = ((seen or {}).get("metadata") or {}).get("uid")
    if uid and uid != ((found or {}).get("metadata") or {}).get("uid"):
        mem.vanished.add(uid)
    return found


async def recreate(mem: Memory, body: Any, spec: TransferJobSpec, rj_name: str) -> dict[str, Any]:
    """The RayJob was deleted under a running job: make it again (the trainer resumes from the ledger)."""
    obj, created = await create_rayjob(mem, body, spec)
    if created:
        event(body, "Warning", Reason.RAYJOB_RECREATED,
              f"RayJob {rj_name} was deleted before the job finished; created it again (it resumes from the ledger)")
    return obj


async def expire(mem: Memory, body: Any, spec: TransferJobSpec, current: dict[str, Any]) -> float | None:
    """ttlSecondsAfterFinished: KubeRay deletes the Ray cluster that long after the job ended (the RayJob's own
    TTL); then delete the RayJob too, keep the TransferJob.

    Returns seconds until it is due, or None when there is nothing (more) to do."""
    ttl = spec.run_policy.ttl_seconds_after_finished
    if ttl is None:
        return None
    finished = current.get("completionTime")
    due = ttl - seconds_since(finished) if finished else 0.0
    if due > 0:
        return due
    rj_name = current["rayJobName"]
    if await mem.api.delete("RayJob", rj_name, ref(body)[1]):
        event(body, "Normal", Reason.RAYJOB_DELETED,
              f"ttlSecondsAfterFinished ({ttl}s) passed: KubeRay deleted the Ray cluster and this deleted RayJob "
              f"{rj_name}; the "
              "TransferJob, its status and everything in object storage stay")
    return None
