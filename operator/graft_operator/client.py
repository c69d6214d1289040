"""The operator's Kubernetes API client for the calls kopf does not make for it: the RayJob, status, Secrets, pods.

Built on lightkube, a public, maintained async client (chosen over kubernetes_asyncio by `bench/client_bench.py`:
the same CPU per request, 40 MB less memory, a third of the import time; figures in bench/RESULTS.md). Every kind
is a lightkube generic resource, so objects stay plain dicts, as kopf hands them to the handlers, and nothing is
parsed into model classes. It logs in on its own from KUBECONFIG or the in-cluster service account, as kopf does.
"""

from __future__ import annotations

from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.config.client_adapter import verify_cluster
from lightkube.generic_resource import create_namespaced_resource
from lightkube.types import CascadeType, PatchType

from graft.api.models import GROUP, KIND, PLURAL, VERSION

# Whatever a call can fail with: the API server's answer (4xx/5xx) or the connection (refused, reset, timed out).
Errors = (ApiError, httpx2.HTTPError)

KINDS = {
    "TransferJob": create_namespaced_resource(GROUP, VERSION, KIND, PLURAL),
    "RayJob": create_namespaced_resource("ray.io", "v1", "RayJob", "rayjobs"),
    "Secret": create_namespaced_resource("", "v1", "Secret", "secrets"),
    "Pod": create_namespaced_resource("", "v1", "Pod", "pods"),
    "Event": create_namespaced_resource("", "v1", "Event", "events"),
}


#: Connections to the API server. httpx's pool looks at every open connection for each request (has it expired, is it
#: readable), so its default (up to 100) cost about a quarter of the CPU per request at 64 requests in flight, against
#: 16 here (`bench/client_bench.py`-style run, issue 16); requests beyond it wait for a free connection.
CONNECTIONS = 16


class Conflict(Exception):
    """An object of that name exists already (409 on create)."""


async def _unless_absent(call: Any) -> Any:
    """The call's answer, or None when the object does not exist (404)."""
    try:
        return await call
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise


class Kube:
    """get / list / create / merge-patch / delete of plain-dict objects by kind name (a key of KINDS)."""

    def __init__(self, config: KubeConfig | None = None) -> None:
        config = config or KubeConfig.from_env()
        # lightkube's own TLS settings (CA, client certificate) on a transport with a smaller pool.
        single = config.get()
        transport = httpx2.AsyncHTTPTransport(
            verify=verify_cluster(single.cluster, single.user, single.abs_file),
            limits=httpx2.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS))
        self.api = AsyncClient(config, transport=transport)

    async def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        found = await _unless_absent(self.api.get(KINDS[kind], name, namespace=namespace))
        return None if found is None else dict(found)

    async def list(self, kind: str, namespace: str, *, labels: dict[str, str] | None = None,
                   fields: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """The objects that match the label and field selectors (equality only)."""
        return [dict(o) async for o in self.api.list(KINDS[kind], namespace=namespace, labels=labels, fields=fields)]

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create an object; raises Conflict when one of that name exists."""
        try:
            created = await self.api.create(KINDS[obj["kind"]].from_dict(obj), namespace=obj["metadata"]["namespace"])
        except ApiError as exc:
            if exc.status.code == 409:
                raise Conflict(f"{obj['kind']} {obj['metadata']['name']} exists") from exc
            raise
        return dict(created)

    async def merge_patch(self, kind: str, name: str, namespace: str, patch: dict[str, Any], *,
                          status: bool = False) -> dict[str, Any] | None:
        """Merge-patch an object (or its status subresource); None when it does not exist."""
        res = KINDS[kind].Status if status else KINDS[kind]
        done = await _unless_absent(self.api.patch(res, name, patch, namespace=namespace, patch_type=PatchType.MERGE))
        return None if done is None else dict(done)

    async def delete(self, kind: str, name: str, namespace: str) -> bool:
        """Delete with background propagation (its dependents go too); False when it was gone already."""
        try:
            await self.api.delete(KINDS[kind], name, namespace=namespace, cascade=CascadeType.BACKGROUND)
        except ApiError as exc:
            if exc.status.code == 404:
                return False
            raise
        return True

    async def close(self) -> None:
        await self.api.close()
