"""Every Kubernetes API verb and resource the operator uses, in one place.

The Helm chart's ClusterRole/Role is generated from this list (`graft rbac`), and the end-to-end
tests audit the emulated API server's request log against it: a call outside this list fails them.
"""

from __future__ import annotations

from typing import Any

#: (apiGroup, resource, verbs, why). Namespaced resources unless `cluster` says otherwise.
RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["graft.dev"],
        "resources": ["transferjobs"],
        "verbs": ["get", "list", "watch", "patch"],
        "why": "watch TransferJobs; kopf keeps its progress in annotations and finalizers",
    },
    {
        "apiGroups": ["graft.dev"],
        "resources": ["transferjobs/status"],
        "verbs": ["get", "patch", "update"],
        "why": "write status (conditions, phase, per-stage progress)",
    },
    {
        "apiGroups": ["ray.io"],
        "resources": ["rayjobs"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
        "why": "create the RayJob that runs the stages, suspend/resume it, delete it after the TTL",
    },
    {
        "apiGroups": [""],
        "resources": ["events"],
        "verbs": ["create", "patch", "list"],
        "why": "post an Event at each transition; read a pending Ray cluster's Events (quota refusals)",
    },
    {
        "apiGroups": ["events.k8s.io"],
        "resources": ["events"],
        "verbs": ["create", "patch"],
        "why": "post an Event at each transition (events.k8s.io clients)",
    },
    {
        "apiGroups": [""],
        "resources": ["pods"],
        "verbs": ["get", "list"],
        "why": "say why a job is pending (unschedulable, image pull)",
    },
    {
        "apiGroups": [""],
        "resources": ["secrets"],
        "verbs": ["get"],
        "why": "read the storage credentials Secret a job names, to read its ledger (never logged or stored)",
    },
]

#: Cluster-scoped reads kopf needs to discover resources and namespaces.
CLUSTER_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["get", "list", "watch"],
        "why": "kopf discovers the TransferJob and RayJob resources",
    },
    {
        "apiGroups": [""],
        "resources": ["namespaces"],
        "verbs": ["get", "list", "watch"],
        "why": "kopf follows the namespaces it serves",
    },
]


def rules(*, namespaced: bool = False) -> list[dict[str, Any]]:
    """The policy rules as Kubernetes writes them (no `why`). Namespaced mode drops cluster reads
    that a namespaced Role cannot grant; kopf then serves only the listed namespaces."""
    chosen = RULES if namespaced else RULES + CLUSTER_RULES
    return [{k: v for k, v in r.items() if k != "why"} for r in chosen]

