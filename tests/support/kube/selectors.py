"""Label and field selectors, as the API server applies them to list, watch and deletecollection."""

from __future__ import annotations

import re
from typing import Any

from .resources import ApiError, ResourceType

_SET_EXPR = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(selector: str) -> list[str]:
    """Split on commas that are not inside `in (a,b)` parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def label_selector_matches(selector: str | None, labels: dict[str, str] | None) -> bool:
    """Equality- and set-based label selectors, as `kubectl -l` writes them."""
    labels = labels or {}
    for req in _split_selector(selector or ""):
        m = _SET_EXPR.match(req)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}
            if (op == "in") != (key in labels and labels[key] in values):
                return False
        elif "!=" in req:
            key, value = (s.strip() for s in req.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in req:
            key, value = (s.strip() for s in req.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif req.startswith("!"):
            if req[1:].strip() in labels:
                return False
        elif req not in labels:
            return False
    return True


#: The field labels a list or watch may select on, by (group, kind), and where each one's value is in the object
#: as served. From the real server's field-label conversions: kubernetes pkg/apis/core/v1/conversion.go
#: (addConversionFuncs for Pod, AddFieldLabelConversionsForEvent, ...ForNamespace, ...ForSecret), with the values
#: of pkg/registry/core/event/strategy.go ToSelectableFields (`source` is the source's component), and
#: pkg/apis/events/v1/conversion.go for events.k8s.io Events (there `regarding.*` and `reportingController`).
_EVENT_LABELS = {label: label for label in (
    "involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
    "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason",
    "reportingComponent", "type", "metadata.namespace", "metadata.name")} | {"source": "source.component"}
FIELD_LABELS: dict[tuple[str, str], dict[str, str]] = {
    ("", "Event"): _EVENT_LABELS,
    ("", "Namespace"): {"status.phase": "status.phase", "metadata.name": "metadata.name"},
    ("", "Secret"): {k: k for k in ("type", "metadata.namespace", "metadata.name")},
    ("", "Pod"): {k: k for k in (
        "metadata.name", "metadata.namespace", "spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
        "spec.serviceAccountName", "spec.hostNetwork", "status.phase", "status.podIP", "status.podIPs",
        "status.nominatedNodeName")} | {"spec.host": "spec.nodeName"},
    ("events.k8s.io", "Event"): {k: k for k in (
        "regarding.kind", "regarding.namespace", "regarding.name", "regarding.uid", "regarding.apiVersion",
        "regarding.resourceVersion", "regarding.fieldPath", "reportingController", "reason", "type",
        "metadata.namespace", "metadata.name")} | {"source": "deprecatedSource.component"},
}


def field_paths(rt: ResourceType) -> dict[str, str]:
    """The field labels `rt` supports, each with the path of its value."""
    if (rt.group, rt.kind) in FIELD_LABELS and not rt.custom:
        return FIELD_LABELS[(rt.group, rt.kind)]
    # Custom resources (apiextensions-apiserver customresource_handler.go crConverter.ConvertFieldLabel): the
    # name, the namespace when namespaced, and the CRD's selectableFields. Every other built-in kind: the name and
    # the namespace (apimachinery runtime.DefaultMetaV1FieldSelectorConversion).
    labels = ["metadata.name", *(["metadata.namespace"] if rt.namespaced or not rt.custom else []),
              *rt.selectable_fields]
    return {label: label for label in labels}


def refuse_unsupported_field_labels(rt: ResourceType, selector: str | None) -> None:
    """400 BadRequest for a field label `rt` does not support, with the real server's message (a list or watch
    converts each label first: apiserver/pkg/endpoints/handlers/get.go ListResource, NewBadRequest)."""
    supported = field_paths(rt)
    for req in _split_selector(selector or ""):
        label = re.split(r"!=|==|=", req, maxsplit=1)[0].strip()
        if label in supported:
            continue
        if rt.custom or (rt.group, rt.kind) in FIELD_LABELS:
            raise ApiError(400, "BadRequest", f"field label not supported: {label}")
        raise ApiError(400, "BadRequest",
                       f'"{label}" is not a known field selector: only "metadata.name", "metadata.namespace"')


def _field_value(obj: dict[str, Any], path: str) -> str:
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, bool):  # as Go formats it (spec.hostNetwork)
        return "true" if node else "false"
    return "" if node is None else str(node)


def field_selector_matches(selector: str | None, obj: dict[str, Any], paths: dict[str, str] | None = None) -> bool:
    """Field selectors (`metadata.name=x`, `involvedObject.uid!=y`); `paths` maps a label to where its value is
    (`field_paths`), a label without one is read at its own path."""
    paths = paths or {}
    for req in _split_selector(selector or ""):
        if "!=" in req:
            key, value = req.split("!=", 1)
            if _field_value(obj, paths.get(key.strip(), key.strip())) == value.strip():
                return False
        elif "=" in req:
            key, value = req.replace("==", "=").split("=", 1)
            if _field_value(obj, paths.get(key.strip(), key.strip())) != value.strip():
                return False
    return True
