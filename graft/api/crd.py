"""Generate the TransferJob CustomResourceDefinition from the pydantic models.

The API server wants a *structural* OpenAPI v3.0 schema: no `$ref`, `nullable` rather than
`anyOf: [X, null]`, booleans for `exclusiveMinimum`, no `const`, every field declared (undeclared
fields, status ones included, are pruned silently). Pydantic emits JSON Schema 2020-12; this module
translates.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from graft.api import models as m

_DROP_KEYS = {"title", "default", "discriminator"}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
            extra = {k: v for k, v in node.items() if k != "$ref"}
            target.update(extra)
            return _resolve(target, defs)
        return {k: _resolve(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, defs) for v in node]
    return node


def _merge_union(branches: list[dict[str, Any]]) -> dict[str, Any]:
    """One object schema for a discriminated union: every branch's fields declared, `type` an enum.

    Structural schemas cannot say "these fields for this type", so CEL rules on the merged object say it:
    which fields each type requires and which it does not take."""
    props: dict[str, Any] = {}
    per_field: dict[str, dict[str, str]] = {}
    kinds: list[str] = []
    for b in branches:
        kind = b["properties"]["type"]["const"]
        kinds.append(kind)
        for name, schema in b["properties"].items():
            if name == "type":
                continue
            per_field.setdefault(name, {})[kind] = " ".join(str(schema.get("description", "")).split())
            props.setdefault(name, schema)
    for name, descs in per_field.items():
        props[name] = dict(props[name])
        texts = set(descs.values())
        if len(texts) == 1:
            text = texts.pop()
            if len(descs) < len(kinds):
                text += f" ({', '.join(descs)} only.)"
        else:
            text = " | ".join(f"{kind}: {d}" for kind, d in descs.items())
        props[name]["description"] = text
    type_desc = "Stage type: " + ", ".join(kinds) + " (run in this order; each at most once)."
    merged = {
        "type": "object",
        "description": "One stage of the job. Fields apply to the stage types named in their descriptions.",
        "required": ["type"],
        "properties": {"type": {"type": "string", "enum": kinds, "description": type_desc}, **props},
    }
    rules = []
    for b in branches:
        kind = b["properties"]["type"]["const"]
        for req in b.get("required", []):
            if req != "type":
                rules.append({"rule": f"self.type != '{kind}' || has(self.{req})", "message": f"{kind} needs {req}"})
        foreign = [name for name in props if name not in b["properties"]]
        if foreign:
            takes = ", ".join(["type", *(n for n in b["properties"] if n != "type")])
            rules.append(
                {
                    "rule": f"self.type != '{kind}' || !({' || '.join(f'has(self.{f})' for f in foreign)})",
                    "message": f"a {kind} stage takes only: {takes}",
                }
            )
    merged["x-kubernetes-validations"] = rules
    return merged


def _structural(node: Any) -> Any:
    if isinstance(node, list):
        return [_structural(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: v for k, v in node.items() if k not in _DROP_KEYS}
    if "oneOf" in node and all("properties" in b for b in node["oneOf"]):
        desc = node.get("description")
        node = _merge_union(node["oneOf"])
        if desc:
            node["description"] = desc
    for key in ("anyOf", "oneOf"):
        if key in node:
            options = node.pop(key)
            non_null = [o for o in options if o.get("type") != "null"]
            if len(non_null) < len(options):
                node["nullable"] = True
            if len(non_null) == 1:
                inner = {k: v for k, v in non_null[0].items() if k not in _DROP_KEYS}
                inner.update({k: v for k, v in node.items()})
                node = inner
            else:
                node[key] = non_null
    if isinstance(node.get("description"), str):
        node["description"] = " ".join(node["description"].split())
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node and not isinstance(node[bound], bool):
            node[plain] = node.pop(bound)
            node[bound] = True
    if node.get("x-kubernetes-int-or-string"):
        # The one anyOf a structural schema allows (controller-gen's shape for resource.Quantity); the
        # pattern applies to the string form.
        node.pop("type", None)
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("type") == "object" and "properties" in node:
        node.pop("additionalProperties", None)  # pruning, not additionalProperties, drops unknown fields
    if node.get("additionalProperties") is True:
        # Any value (pydantic's dict[str, Any]): say it the structural way. Beside preserve-unknown-fields a
        # `true` empties the object: the API server prunes with AdditionalProperties.Structural, which is nil
        # for `true` (apiextensions-apiserver pkg/apiserver/schema/pruning/algorithm.go, schema/convert.go).
        del node["additionalProperties"]
        node["x-kubernetes-preserve-unknown-fields"] = True
    out = {}
    for k, v in node.items():
        if k == "properties":
            out[k] = {name: _structural(s) for name, s in v.items()}
        elif k in ("items", "additionalProperties") and isinstance(v, dict):
            out[k] = _structural(v)
        else:
            out[k] = v
    return out


def openapi_schema(model: type, description: str | None = None) -> dict[str, Any]:
    """The structural OpenAPI v3.0 schema of one pydantic model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema = _structural(_resolve(raw, defs))
    if description:
        schema["description"] = description
    return schema


#: `kubectl get` columns (priority 1: with `-o wide` only).
PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Stage", "type": "string", "jsonPath": ".status.stage"},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress"},
    {"name": "Backbone", "type": "string", "jsonPath": ".spec.model.backbone", "priority": 1},
    {"name": "RayJob", "type": "string", "jsonPath": ".status.rayJobName", "priority": 1},
    {"name": "Model", "type": "string", "jsonPath": ".status.modelURI", "priority": 1},
    {"name": "Logs", "type": "string", "jsonPath": ".status.logsURI", "priority": 1},
    {"name": "MLflow Run", "type": "string", "jsonPath": ".status.tracking.runID", "priority": 1},
    {"name": "Model Version", "type": "string", "jsonPath": ".status.tracking.modelVersion", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def root_schema() -> dict[str, Any]:
    """The resource's openAPIV3Schema: apiVersion, kind, metadata, and the spec and status from the models."""
    return {
        "type": "object",
        "description": (m.TransferJob.__doc__ or "").strip(),
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": f"APIVersion defines the versioned schema of this representation of an object: "
                f"{m.API_VERSION}.",
            },
            "kind": {
                "type": "string",
                "description": f"Kind is the REST resource this object represents: {m.KIND}.",
            },
            # Nothing but `type: object`: a real API server refuses a CRD whose root metadata schema says
            # anything else, a description included ("must not specify anything other than name and
            # generateName"; apiextensions-apiserver/pkg/apiserver/schema/validation.go,
            # validateStructuralMetadataInvariants). kubectl explain describes ObjectMeta by itself.
            "metadata": {"type": "object"},
            "spec": openapi_schema(m.TransferJobSpec),
            "status": openapi_schema(m.TransferJobStatus),
        },
    }


def build_crd() -> dict[str, Any]:
    """The TransferJob CustomResourceDefinition."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{m.PLURAL}.{m.GROUP}",
            "labels": {"app.kubernetes.io/name": "graft", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": m.GROUP,
            "names": {
                "kind": m.KIND,
                "listKind": f"{m.KIND}List",
                "plural": m.PLURAL,
                "singular": m.SINGULAR,
                "shortNames": list(m.SHORT_NAMES),
                "categories": list(m.CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": m.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [dict(c) for c in PRINTER_COLUMNS],  # a copy per CRD
                    "schema": {"openAPIV3Schema": root_schema()},
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as the YAML `graft crd` prints and the chart ships."""
    header = "# Generated by `graft crd` from graft/api/models.py. Do not edit by hand.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)
