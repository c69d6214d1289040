"""PATCH bodies: JSON merge patch (also standing in for apply and strategic-merge patches) and JSON patch."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch

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


MAX_JSON_PATCH_OPERATIONS = 10_000  # patch.go maxJSONPatchOperations


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch (through the `jsonpatch` package), with the real server's answers
    (apiserver/pkg/endpoints/handlers/patch.go, jsonPatcher.applyJSPatch): a body that does not decode as a list
    of operations is 400 BadRequest; an operation that cannot be applied (a failed `test`, a missing path, an
    unknown op) is 422 Invalid with apimachinery's generic message (NewGenericServerResponse), which leaves out
    why."""
    if not isinstance(ops, list) or not all(isinstance(op, dict) for op in ops):
        raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
    if len(ops) > MAX_JSON_PATCH_OPERATIONS:
        raise ApiError(413, "RequestEntityTooLarge", f"Request entity too large: The allowed maximum operations in a "
                                                     f"JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {len(ops)}")
    # A path that is not there raises jsonpointer's exception, which jsonpatch imports: one dependency, not two.
    try:
        return jsonpatch.JsonPatch(ops).apply(doc)  # a copy: `doc` is left as it was
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError, ValueError) as e:
        raise ApiError(422, "Invalid", "the server rejected our request due to an error in our request") from e


def patched(rt: ResourceType, current: dict[str, Any], body: Any, content_type: str) -> Any:
    """`current` with the PATCH `body` of `content_type` applied (a new object; `current` is left as it was)."""
    if content_type == "application/json-patch+json":
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
