"""Custom resources as the API server checks them: CRDs refused where a real server refuses them, and objects
pruned, defaulted and validated against their CRD's openAPIV3Schema (jsonschema) and x-kubernetes-validations
(CEL, through cel-python)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jsonschema

from support import crdcheck

from .resources import ApiError, ResourceType


def jsonschema_for(schema: dict[str, Any], strict_fields: bool = True) -> dict[str, Any]:
    """Translate an openAPIV3Schema into plain JSON Schema (draft 4) to check objects the way the
    API server would. `strict_fields` rejects unknown fields like `kubectl apply --validate=strict`."""

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(v) for v in node]
        if not isinstance(node, dict):
            return node
        node = {k: walk(v) for k, v in node.items() if not k.startswith("x-kubernetes-validations")}
        if node.pop("x-kubernetes-int-or-string", False):
            node.pop("anyOf", None)
            node["type"] = ["integer", "string"]
        if node.pop("nullable", False) and "type" in node:
            t = node["type"]
            node["type"] = ([*t] if isinstance(t, list) else [t]) + ["null"]
            if "enum" in node:
                node["enum"] = [*node["enum"], None]
        # x-kubernetes-preserve-unknown-fields keeps undeclared fields (a pass-through core/v1 Volume's source):
        # neither pruned nor unknown to strict field validation.
        closed = strict_fields and node.get("x-kubernetes-preserve-unknown-fields") is not True
        if closed and node.get("type") in ("object", ["object", "null"]) and "properties" in node:
            if node["properties"] and "additionalProperties" not in node:
                node["additionalProperties"] = False
        return node

    # Draft 4 is the JSON Schema that OpenAPI v3.0 extends (boolean exclusiveMinimum/Maximum).
    return {"$schema": "http://json-schema.org/draft-04/schema#", **walk(schema)}


def prune(obj: Any, schema: dict[str, Any] | None, *, root: bool = False) -> Any:
    """Drop fields the structural schema does not declare, as the API server does silently (a copy;
    apiextensions-apiserver/pkg/apiserver/schema/pruning/algorithm.go, transcribed in support/crdcheck.py)."""
    if schema is None:
        return obj
    pruned = crdcheck.prune(obj, schema, root=root)
    if root and isinstance(obj, dict) and "metadata" in obj:
        pruned["metadata"] = obj["metadata"]  # the same dict: callers go on filling it in
    return pruned


def _field_path(error: jsonschema.ValidationError) -> str:
    out = ""
    for p in error.absolute_path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<root>"


_CEL_CACHE: dict[tuple[int, str, str, str | None], list[tuple[str, str]]] = {}


def _cel_violations(schema: dict[str, Any], obj: dict[str, Any], old: dict[str, Any] | None = None
                    ) -> list[tuple[str, str]]:
    """x-kubernetes-validations (CEL) rules, evaluated with cel-python as the API server would; with `old` (an
    update) transition rules compare against it (`oldSelf`), on a create they are skipped.

    cel-python takes tens of milliseconds per object, the real server microseconds; results are cached per
    top-level field value (a status write re-checks an unchanged spec) so that the emulator's speed does not
    stand in for the operator's in benchmarks."""
    from support.cel import _NO_OLD as NO_OLD
    from support.cel import cel_violations

    out: list[tuple[str, str]] = []
    props = schema.get("properties") or {}
    olds = old if isinstance(old, dict) else {}
    for key, value in obj.items():
        if key == "metadata" or key not in props:
            continue
        old_value = olds.get(key, NO_OLD)
        cache_key = (id(schema), key, json.dumps(value, sort_keys=True),
                     None if old_value is NO_OLD else json.dumps(old_value, sort_keys=True))
        if cache_key not in _CEL_CACHE:
            if len(_CEL_CACHE) > 10_000:
                _CEL_CACHE.clear()
                _CEL_SCHEMAS.clear()
            _CEL_SCHEMAS[id(schema)] = schema  # keeps the id from being reused by another schema while cached
            _CEL_CACHE[cache_key] = cel_violations(props[key], value, key, old_value)
        out += _CEL_CACHE[cache_key]
    return out


_CEL_SCHEMAS: dict[int, dict[str, Any]] = {}


#: CRD checks and schema validators are pure functions of the CRD; KubeRay's CRDs are large, so every
#: emulated server of a test session shares them (by a digest of the CRD's name and spec).
_CRD_ERRORS: dict[str, list[crdcheck.FieldError]] = {}
_VALIDATORS: dict[str, Any] = {}


def _crd_digest(crd: dict[str, Any]) -> str:
    key = json.dumps([crd.get("metadata", {}).get("name"), crd.get("spec")], sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()


def attach_validator(rt: ResourceType, digest: str | None = None) -> None:
    """Give a type with a schema its validator (shared between servers for the same CRD `digest`)."""
    if rt.schema is None:
        return
    key = f"{digest}/{rt.version}" if digest else None
    if key is None:
        rt.validator = jsonschema.Draft4Validator(jsonschema_for(rt.schema, strict_fields=False))
        return
    if key not in _VALIDATORS:
        _VALIDATORS[key] = jsonschema.Draft4Validator(jsonschema_for(rt.schema, strict_fields=False))
    rt.validator = _VALIDATORS[key]


def refuse_invalid_crd(crd: dict[str, Any], old: dict[str, Any] | None = None) -> str:
    """Apply the API server's checks to a CRD being created (or replacing `old`): 422 Invalid with the
    server's message and causes when it would refuse it (support/crdcheck.py). Returns the CRD's digest."""
    digest = _crd_digest(crd)
    if digest not in _CRD_ERRORS:
        _CRD_ERRORS[digest] = crdcheck.check_crd(crd)
    errors = list(_CRD_ERRORS[digest])
    if old is not None:
        # validation.go validateCustomResourceDefinitionSpecUpdate: these name the stored resource.
        for path, new_value, old_value in (
                ("spec.group", crd["spec"].get("group"), old["spec"].get("group")),
                ("spec.names.plural", crd["spec"].get("names", {}).get("plural"),
                 old["spec"].get("names", {}).get("plural"))):
            if new_value != old_value:
                errors.append(crdcheck.FieldError("FieldValueInvalid", path, new_value, "field is immutable"))
    if errors:
        status = crdcheck.invalid_status(crd.get("metadata", {}).get("name", ""), errors)
        raise ApiError(422, "Invalid", status["message"], status["details"])
    return digest


def types_from_crd(crd: dict[str, Any]) -> list[ResourceType]:
    """The resource types a CRD serves, one per served version."""
    spec = crd.get("spec", {})
    names = spec.get("names", {})
    out = []
    for v in spec.get("versions", []):
        if not v.get("served", True):
            continue
        out.append(ResourceType(
            group=spec["group"], version=v["name"], plural=names["plural"], kind=names["kind"],
            namespaced=spec.get("scope", "Namespaced") == "Namespaced", singular=names.get("singular", ""),
            short_names=tuple(names.get("shortNames", [])), categories=tuple(names.get("categories", [])),
            has_status="status" in (v.get("subresources") or {}), custom=True,
            schema=(v.get("schema") or {}).get("openAPIV3Schema"),
            selectable_fields=tuple(f["jsonPath"].lstrip(".") for f in v.get("selectableFields") or []),
        ))
    return out


def check(rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None = None) -> dict[str, Any]:
    """Prune, default and validate against the CRD schema; 422 naming the fields, as the API server does."""
    if rt.schema is None:
        return obj
    obj = prune(obj, rt.schema, root=True)
    # Defaults from the schema fill in what the object leaves out, before validation (KubeRay's schema
    # defaults e.g. workerGroupSpecs[].minReplicas/maxReplicas, which it also requires).
    meta = obj.get("metadata")
    obj = crdcheck.apply_defaults(obj, rt.schema)
    if meta is not None:
        obj["metadata"] = meta  # the same dict: callers go on filling it in
    errors = sorted(rt.validator.iter_errors({k: v for k, v in obj.items() if k != "metadata"}),
                    key=lambda e: list(e.absolute_path))
    causes = [{"reason": "FieldValueInvalid", "field": _field_path(e), "message": e.message} for e in errors]
    if not causes:
        causes = [{"reason": "FieldValueInvalid", "field": path, "message": message}
                  for path, message in _cel_violations(rt.schema, obj, old)]
    if causes:
        name = obj.get("metadata", {}).get("name", "")
        text = "; ".join(f"{c['field']}: Invalid value: {c['message']}" for c in causes)
        raise ApiError(422, "Invalid", f'{rt.kind}.{rt.group} "{name}" is invalid: {text}',
                       {"name": name, "group": rt.group, "kind": rt.kind, "causes": causes})
    return obj

