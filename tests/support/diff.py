"""What go-cmp's cmp.Diff prints for the Kubernetes controllers' table tests, for plain JSON-like data: one line
per path where two values differ, so a failing case names the field instead of two whole objects.

    assert got == want, diff(want, got)
"""

from __future__ import annotations

from typing import Any

_ABSENT = object()


def diff(want: Any, got: Any) -> str:
    """The differences as `(-want +got)` lines, one per path; empty when the values are equal."""
    lines = _paths(want, got, "")
    return "\n".join(["(-want +got):", *lines]) if lines else ""


def _paths(want: Any, got: Any, path: str) -> list[str]:
    if isinstance(want, dict) and isinstance(got, dict):
        keys = [*want, *(k for k in got if k not in want)]
        return [line for k in keys for line in _paths(want.get(k, _ABSENT), got.get(k, _ABSENT), _key(path, k))]
    if isinstance(want, list) and isinstance(got, list):
        items = range(max(len(want), len(got)))
        return [line for i in items for line in _paths(_item(want, i), _item(got, i), f"{path}[{i}]")]
    if want is not _ABSENT and got is not _ABSENT and want == got:
        return []
    return [f"{path or '(root)'}:", *([f"  - {want!r}"] if want is not _ABSENT else []),
            *([f"  + {got!r}"] if got is not _ABSENT else [])]


def _key(path: str, key: Any) -> str:
    return f"{path}.{key}" if isinstance(key, str) and key.isidentifier() else f"{path}[{key!r}]"


def _item(values: list[Any], i: int) -> Any:
    return values[i] if i < len(values) else _ABSENT
