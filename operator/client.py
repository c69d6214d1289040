"""A small async Kubernetes client for the calls kopf does not make for us (children, status, Secrets, pods).

It reuses kopf's own authenticated session (the one `graft operator` logs in with from KUBECONFIG or the
in-cluster account), so there is one connection pool, one login and one retry policy. kopf's client is an
internal module; kopf is pinned (==1.45.2) and this file is the only place that touches it.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote, urlencode

from kopf._cogs.clients import api as _api
from kopf._cogs.clients import errors as _errors
from kopf._cogs.configs import configuration

APIError = _errors.APIError
Conflict = _errors.APIConflictError
NotFound = _errors.APINotFoundError

_log = logging.getLogger("graft.operator.client")
_settings: configuration.OperatorSettings | None = None


def configure(settings: configuration.OperatorSettings) -> None:
    """Remember the operator's settings (timeouts, retry backoffs); called from the startup handler."""
    global _settings
    _settings = settings


def _opts() -> configuration.OperatorSettings:
    if _settings is None:  # outside `graft operator` (tests of single calls): kopf's defaults
        configure(configuration.OperatorSettings())
    assert _settings is not None
    return _settings


def path(
    group: str, version: str, plural: str, namespace: str | None, name: str | None = None, sub: str | None = None
) -> str:
    """The URL path of a collection or object, e.g. /apis/ray.io/v1/namespaces/ns/rayjobs/x."""
    base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    if namespace:
        base += f"/namespaces/{quote(namespace)}"
    base += f"/{plural}"
    if name:
        base += f"/{quote(name)}"
    if sub:
        base += f"/{sub}"
    return base


async def get(url: str, **params: str) -> dict[str, Any] | None:
    """GET an object or list; None when it does not exist."""
    if params:
        url = f"{url}?{urlencode(params)}"
    try:
        return await _api.get(url, settings=_opts(), logger=_log)
    except NotFound:
        return None


async def create(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST an object to its collection; raises Conflict when one of that name exists."""
    return await _api.post(url, payload=body, settings=_opts(), logger=_log)


async def merge_patch(url: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """Merge-patch an object (or its status subresource); None when it does not exist."""
    try:
        return await _api.patch(
            url, payload=body, headers={"Content-Type": "application/merge-patch+json"}, settings=_opts(), logger=_log
        )
    except NotFound:
        return None


async def delete(url: str) -> bool:
    """DELETE an object with background propagation (its dependents go too); False when it was gone."""
    try:
        await _api.delete(
            url, payload={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
            settings=_opts(), logger=_log,
        )
    except NotFound:
        return False
    return True
