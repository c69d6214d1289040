"""What every part of the emulated API server shares: the served resource types, the built-in ones, the
request log's entries and the `Status` errors."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass
class ResourceType:
    """What the server knows about one served resource (from a built-in table or an applied CRD)."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    has_status: bool = False
    custom: bool = False  # custom resources refuse strategic-merge patches, like the real server
    schema: dict[str, Any] | None = None  # openAPIV3Schema: pruning and validation
    validator: Any = None
    selectable_fields: tuple[str, ...] = ()  # a CRD's spec.versions[].selectableFields, as field labels

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


#: Built-in resources a kopf operator and the tests use. RayJob and RayCluster are not among them: they come
#: from KubeRay's real CRDs, installed through the API at start (see `emulated_api`).
BUILTIN_TYPES = [
    ResourceType("", "v1", "namespaces", "Namespace", namespaced=False, singular="namespace", short_names=("ns",),
                 has_status=True),
    ResourceType("", "v1", "events", "Event", singular="event", short_names=("ev",)),
    ResourceType("", "v1", "configmaps", "ConfigMap", singular="configmap", short_names=("cm",)),
    ResourceType("", "v1", "secrets", "Secret", singular="secret"),
    ResourceType("", "v1", "pods", "Pod", singular="pod", short_names=("po",), has_status=True),
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount", singular="serviceaccount", short_names=("sa",)),
    ResourceType("events.k8s.io", "v1", "events", "Event", singular="event", short_names=("ev",)),
    ResourceType("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
                 namespaced=False, singular="customresourcedefinition", short_names=("crd", "crds"),
                 has_status=True),
]


@dataclass(frozen=True)
class LoggedRequest:
    """One API request as the audit sees it: the RBAC verb and the resource it touched."""

    method: str
    path: str
    verb: str  # get, list, watch, create, update, patch, delete, deletecollection
    group: str
    version: str
    resource: str
    subresource: str | None
    namespace: str | None
    name: str | None
    user: str
    status: int
    error: str | None = None  # the Status message of a failed request
    time: float = 0.0  # when the answer was ready (time.time())
    duration: float = 0.0  # seconds the server took to answer (a watch: how long it streamed)

    @property
    def rbac_resource(self) -> str:
        """`resource` or `resource/subresource`, as RBAC rules spell it."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


class ApiError(Exception):
    """An error answered as a Kubernetes `Status` object."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": self.code,
                "reason": self.reason, "message": self.message, "details": self.details}


def now() -> str:
    """The current time as the API server writes timestamps (RFC 3339, seconds, UTC)."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def convert_on_write(rt: ResourceType, obj: dict[str, Any]) -> None:
    """What decoding a written object into the server's internal version does to it, in place: a Secret's
    write-only `stringData` is merged over `data`, base64-encoded, and dropped (kubernetes
    pkg/apis/core/v1/conversion.go Convert_v1_Secret_To_core_Secret: "StringData overwrites Data"; the internal
    Secret has no StringData, so it is never stored or returned)."""
    if (rt.group, rt.kind) != ("", "Secret") or "stringData" not in obj:
        return
    string_data = obj.pop("stringData") or {}
    if not isinstance(string_data, dict) or not all(isinstance(v, str) for v in string_data.values()):
        raise ApiError(400, "BadRequest", 'Secret in version "v1" cannot be handled as a Secret: stringData must '
                                          "map keys to strings")
    if string_data:
        obj["data"] = {**(obj.get("data") or {}),
                       **{k: base64.b64encode(v.encode()).decode() for k, v in string_data.items()}}
