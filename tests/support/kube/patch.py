"""PATCH bodies: JSON merge patch (also standing in for apply and strategic-merge patches) and JSON patch."""

from __future__ import annotations

import copy
from typing import Any

from .resources import ApiError, ResourceType


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for p in parts:
        if isinstance(doc, list):
            doc = doc[int(p)]
        elif isinstance(doc, dict):
            doc = doc[p]
        else:
            raise KeyError(p)
    return doc


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, test, move, copy); a failed `test` answers 422."""
    doc = copy.deepcopy(doc)
    for op in ops:
        kind, parts = op.get("op"), _pointer(op.get("path", ""))
        try:
            if kind == "test":
                if _walk(doc, parts) != op.get("value"):
                    raise ApiError(422, "Invalid", f"the server rejected our request: test failed at {op['path']}")
                continue
            if kind in ("move", "copy"):
                src = _pointer(op["from"])
                value = copy.deepcopy(_walk(doc, src))
                if kind == "move":
                    parent = _walk(doc, src[:-1])
                    del parent[int(src[-1]) if isinstance(parent, list) else src[-1]]
                kind, op = "add", {**op, "value": value}
            if not parts:
                doc = copy.deepcopy(op.get("value")) if kind != "remove" else None
                continue
            parent, last = _walk(doc, parts[:-1]), parts[-1]
            if kind == "add":
                if isinstance(parent, list):
                    parent.insert(len(parent) if last == "-" else int(last), copy.deepcopy(op["value"]))
                else:
                    parent[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
            elif kind == "replace":
                if isinstance(parent, list):
                    parent[int(last)] = copy.deepcopy(op["value"])
                else:
                    if last not in parent:
                        raise KeyError(last)
                    parent[last] = copy.deepcopy(op["value"])
            else:
                raise ApiError(422, "Invalid", f"unsupported JSON patch op {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise ApiError(422, "Invalid", f"the server rejected our request: JSON patch {op!r} failed: {e!r}") from e
    return doc



def patched(rt: ResourceType, current: dict[str, Any], body: Any, content_type: str) -> Any:
    """`current` with the PATCH `body` of `content_type` applied (a new object; `current` is left as it was)."""
    if content_type == "application/json-patch+json":
        if not isinstance(body, list):
            raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
        return json_patch(current, body)
    if content_type in ("application/merge-patch+json", "application/apply-patch+yaml"):
        return merge_patch(current, body)
    if content_type == "application/strategic-merge-patch+json":
        if rt.custom:
            raise ApiError(415, "UnsupportedMediaType",
                           f"the body of the request was in an unknown format - accepted media types include: "
                           f"application/json-patch+json, application/merge-patch+json, "
                           f"application/apply-patch+yaml (strategic merge patch is not supported for "
                           f"{rt.qualified})")
        return merge_patch(current, body)  # approximation: lists are replaced, not merged by key
    raise ApiError(415, "UnsupportedMediaType", f"unsupported patch content type {content_type!r}")
