"""Evaluate a CRD schema's `x-kubernetes-validations` (CEL) rules on an object, as the API server does."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import celpy
from celpy import json_to_cel

_NO_OLD = object()  # no previous object: a create, or a new list item / map key


@lru_cache(maxsize=1)
def environment() -> celpy.Environment:
    """One CEL environment (building its parser takes tens of milliseconds)."""
    return celpy.Environment()


@lru_cache(maxsize=1024)
def parse(rule: str) -> Any:
    """The parse tree of a CEL expression (raises celpy.CELParseError when it is not valid CEL)."""
    return environment().compile(rule)


@lru_cache(maxsize=256)
def compile_rule(rule: str) -> celpy.Runner:
    """Compile one CEL rule (raises celpy.CELParseError when it is not valid CEL)."""
    return environment().program(parse(rule))


@lru_cache(maxsize=256)
def uses_old_self(rule: str) -> bool:
    """A transition rule: it reads `oldSelf` (a token, not text inside a string literal)."""
    from lark import Token

    tree = parse(rule)
    return any(str(tok) == "oldSelf" for tok in tree.scan_values(lambda v: isinstance(v, Token)))


def _holds(rule: str, value: Any, old: Any = _NO_OLD) -> bool:
    activation = {"self": json_to_cel(value)}
    if old is not _NO_OLD:
        activation["oldSelf"] = json_to_cel(old)
    try:
        result = compile_rule(rule).evaluate(activation)
    except celpy.CELEvalError:
        return False
    return result is True or (not isinstance(result, celpy.CELEvalError) and bool(result))


def cel_violations(schema: dict[str, Any], obj: Any, path: str = "", old: Any = _NO_OLD) -> list[tuple[str, str]]:
    """(path, message) for every CEL rule `obj` breaks, walking the schema's properties and items.

    `old` is the previous object (an update). Transition rules (those reading `oldSelf`) are evaluated only
    where an old value exists at the same place, as the API server does: never on create, and not for a list
    item or map value that has no counterpart (apiextensions-apiserver/pkg/apiserver/schema/cel/validation.go,
    `validateExpressions` skips them when `oldObj` is nil). Items are matched by index here, the server matches
    them only in `x-kubernetes-list-type: map` lists by key; no rule of ours or KubeRay's sits on such items."""
    if obj is None:
        return []
    out = []
    for r in schema.get("x-kubernetes-validations", []):
        if uses_old_self(r["rule"]):
            if old is _NO_OLD or old is None:
                continue
            if not _holds(r["rule"], obj, old):
                out.append((path or "(root)", r.get("message") or f"failed rule: {r['rule']}"))
        elif not _holds(r["rule"], obj):
            out.append((path or "(root)", r.get("message") or f"failed rule: {r['rule']}"))
    if isinstance(obj, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        olds = old if isinstance(old, dict) else {}
        for key, value in obj.items():
            sub = props.get(key) or (extra if isinstance(extra, dict) else None)
            if sub is not None:
                out += cel_violations(sub, value, f"{path}.{key}" if path else key, olds.get(key, _NO_OLD))
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        olds = old if isinstance(old, list) else []
        for i, value in enumerate(obj):
            out += cel_violations(schema["items"], value, f"{path}[{i}]", olds[i] if i < len(olds) else _NO_OLD)
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
