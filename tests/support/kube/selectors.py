"""Label and field selectors, as the API server applies them to list, watch and deletecollection."""

from __future__ import annotations

import re
from typing import Any

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


def _field_value(obj: dict[str, Any], path: str) -> Any:
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return "" if node is None else str(node)


def field_selector_matches(selector: str | None, obj: dict[str, Any]) -> bool:
    """Field selectors (`metadata.name=x`, `involvedObject.uid!=y`)."""
    for req in _split_selector(selector or ""):
        if "!=" in req:
            key, value = req.split("!=", 1)
            if _field_value(obj, key.strip()) == value.strip():
                return False
        elif "=" in req:
            key, value = req.replace("==", "=").split("=", 1)
            if _field_value(obj, key.strip()) != value.strip():
                return False
    return True
