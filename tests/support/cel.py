"""Evaluate a CRD schema's `x-kubernetes-validations` (CEL) rules on an object, as the API server does."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import celpy
from celpy import json_to_cel


@lru_cache(maxsize=256)
def compile_rule(rule: str) -> celpy.Runner:
    """Compile one CEL rule (raises celpy.CELParseError when it is not valid CEL)."""
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _holds(rule: str, value: Any) -> bool:
    try:
        result = compile_rule(rule).evaluate({"self": json_to_cel(value)})
    except celpy.CELEvalError:
        return False
    return result is True or (not isinstance(result, celpy.CELEvalError) and bool(result))


def cel_violations(schema: dict[str, Any], obj: Any, path: str = "") -> list[tuple[str, str]]:
    """(path, message) for every CEL rule `obj` breaks, walking the schema's properties and items."""
    if obj is None:
        return []
    out = [
        (path or "(root)", r["message"])
        for r in schema.get("x-kubernetes-validations", [])
        if not _holds(r["rule"], obj)
    ]
    if isinstance(obj, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, value in obj.items():
            sub = props.get(key) or (extra if isinstance(extra, dict) else None)
            if sub is not None:
                out += cel_violations(sub, value, f"{path}.{key}" if path else key)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(obj):
            out += cel_violations(schema["items"], value, f"{path}[{i}]")
    return out


def all_rules(schema: Any) -> list[str]:
    """Every CEL rule in a schema."""
    found: list[str] = []
    if isinstance(schema, dict):
        found += [r["rule"] for r in schema.get("x-kubernetes-validations", [])]
        for value in schema.values():
            found += all_rules(value)
    elif isinstance(schema, list):
        for value in schema:
            found += all_rules(value)
    return found
