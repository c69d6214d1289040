"""Why a created job is still not running: read from its pods and Events (unschedulable, image pull, quota)."""

from __future__ import annotations

from typing import Any

from graft.operator import client

_IMAGE_PULL = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
# A container that cannot be configured: usually a missing Secret/ConfigMap or key (e.g. the credentials Secret).
_CONFIG = ("CreateContainerConfigError", "CreateContainerError")
CLUSTER_LABEL = "ray.io/cluster"


def from_pods(pods: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The first known blocking reason among a Ray cluster's pods."""
    for pod in pods:
        name = pod.get("metadata", {}).get("name", "?")
        status = pod.get("status") or {}
        for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in _IMAGE_PULL:
                detail = waiting.get("message") or waiting["reason"]
                return "ImagePullBackOff", f"pod {name} cannot pull image {cs.get('image', '')}: {detail}"
            if waiting.get("reason") in _CONFIG:
                return "ContainerConfigError", f"pod {name} cannot start: {waiting.get('message') or waiting['reason']}"
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and (
                cond.get("reason") == "Unschedulable"
            ):
                return "Unschedulable", f"pod {name} cannot be scheduled: {cond.get('message') or 'no node fits'}"
    return None


def from_events(events: list[dict[str, Any]], names: set[str]) -> tuple[str, str] | None:
    """A quota refusal among the Events of the given objects (pods cannot even be created then)."""
    for ev in sorted(events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "", reverse=True):
        if (ev.get("involvedObject") or {}).get("name") not in names:
            continue
        message = ev.get("message") or ""
        if "exceeded quota" in message or "ResourceQuota" in message:
            return "QuotaExceeded", f"{ev['involvedObject'].get('kind', 'object')} " \
                f"{ev['involvedObject'].get('name')}: {message}"
    return None


def from_kueue(rayjob: dict[str, Any], suspend_requested: bool) -> tuple[str, str] | None:
    """Kueue holds a queued RayJob suspended until its quota admits it."""
    queue = (rayjob.get("metadata", {}).get("labels") or {}).get("kueue.x-k8s.io/queue-name")
    if queue and (rayjob.get("spec") or {}).get("suspend") and not suspend_requested:
        return "QueuedByKueue", f"waiting for Kueue to admit the job in queue {queue} (quota)"
    return None


async def reason(namespace: str, rayjob: dict[str, Any], suspend_requested: bool) -> tuple[str, str] | None:
    """Look at the RayJob's cluster pods and Events; None when nothing known blocks it."""
    found = from_kueue(rayjob, suspend_requested)
    if found:
        return found
    cluster = (rayjob.get("status") or {}).get("rayClusterName")
    if not cluster:
        return None
    selector = f"{CLUSTER_LABEL}={cluster}"
    pods = await client.get(client.path("", "v1", "pods", namespace), labelSelector=selector) or {}
    items = [p for p in pods.get("items") or [] if (p.get("metadata", {}).get("labels") or {}).get(CLUSTER_LABEL)
             == cluster]
    found = from_pods(items)
    if found:
        return found
    events = await client.get(client.path("", "v1", "events", namespace)) or {}
    return from_events(events.get("items") or [], {cluster, rayjob["metadata"]["name"]})
