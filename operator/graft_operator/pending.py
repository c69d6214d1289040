"""Why a created job is still not running: read from its pods and Events (unschedulable, image pull, quota)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from graft_operator import client
from graft_operator.conditions import Reason

_IMAGE_PULL = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
# A container that cannot be configured: usually a missing Secret/ConfigMap or key (e.g. the credentials Secret).
_CONFIG = ("CreateContainerConfigError", "CreateContainerError")
CLUSTER_LABEL = "ray.io/cluster"

log = logging.getLogger("graft_operator")


def from_pods(pods: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The first known blocking reason among a Ray cluster's pods."""
    for pod in pods:
        name = pod.get("metadata", {}).get("name", "?")
        status = pod.get("status") or {}
        for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in _IMAGE_PULL:
                detail = waiting.get("message") or waiting["reason"]
                return Reason.IMAGE_PULL_BACK_OFF, f"pod {name} cannot pull image {cs.get('image', '')}: {detail}"
            if waiting.get("reason") in _CONFIG:
                detail = waiting.get("message") or waiting["reason"]
                return Reason.CONTAINER_CONFIG_ERROR, f"pod {name} cannot start: {detail}"
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and (
                cond.get("reason") == "Unschedulable"
            ):
                return Reason.UNSCHEDULABLE, f"pod {name} cannot be scheduled: {cond.get('message') or 'no node fits'}"
    return None


def from_events(events: list[dict[str, Any]]) -> tuple[str, str] | None:
    """A quota refusal among a job's Events, the latest first (pods cannot even be created then)."""
    for ev in sorted(events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "", reverse=True):
        message = ev.get("message") or ""
        if "exceeded quota" in message or "ResourceQuota" in message:
            return Reason.QUOTA_EXCEEDED, f"{ev['involvedObject'].get('kind', 'object')} " \
                f"{ev['involvedObject'].get('name')}: {message}"
    return None


async def reason(api: client.Kube, namespace: str, rayjob: dict[str, Any]) -> tuple[str, str] | None:
    """Look at the RayJob's cluster pods, then at the Events of the cluster and the RayJob; None when nothing
    known blocks it. (A RayJob that Kueue holds is told apart in `status.derive_state`, from the RayJob alone.)"""
    cluster = (rayjob.get("status") or {}).get("rayClusterName")
    if not cluster:
        return None
    found = from_pods(await api.list("Pod", namespace, labels={CLUSTER_LABEL: cluster}))
    if found:
        return found
    events = [ev for name in (cluster, rayjob["metadata"]["name"])
              for ev in await api.list("Event", namespace, fields={"involvedObject.name": name})]
    return from_events(events)


@dataclass
class PendingCheck:
    """Why a created job's cluster does not start, as its pods and Events said when last looked at."""

    reason: tuple[str, str] | None = None
    checked_at: float = 0.0
    since: float | None = None  # when the cluster was first seen starting

    async def look(self, api: client.Kube, namespace: str, rayjob: dict[str, Any], t: float, every: float,
                   log_extra: dict[str, Any]) -> tuple[str, str] | None:
        """What holds a starting cluster up (`reason`), looked at once it has been starting for `every` seconds (its
        first seconds are no problem: its pods may not even exist), then as often."""
        self.since = self.since or t
        if t - max(self.checked_at, self.since) >= every:
            self.checked_at = t
            try:
                self.reason = await reason(api, namespace, rayjob)
            except client.Errors as exc:
                log.warning(f"cannot inspect pods/events: {exc}", extra=log_extra)
        return self.reason
