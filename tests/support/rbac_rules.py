"""Whether an API call the operator made is covered by its RBAC rules (`graft_operator.rbac.rules`): the tests'
check of what the emulated API server logged against what the chart grants."""

from __future__ import annotations

from graft_operator import rbac


def allows(method: str, api_group: str, resource: str, namespaced: bool = False) -> bool:
    """Whether an HTTP request's verb on a resource is covered by the rules."""
    return any(
        api_group in r["apiGroups"] and resource in r["resources"] and method in r["verbs"]
        for r in rbac.rules(namespaced=namespaced)
    )
