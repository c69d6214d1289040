"""The emulated API server's HTTP side: kmock's Kubernetes scaffold (server, discovery, error bodies) with the
store in front of it for object URLs, the request log, and watch streams."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp.web
import kmock
import yaml

from .patch import patched
from .resources import ApiError, LoggedRequest, ResourceType
from .selectors import refuse_unsupported_field_labels
from .store import Store, Watcher


def _json(obj: Any, status: int) -> aiohttp.web.Response:
    """A JSON answer with the real server's Content-Type, `application/json` and no charset (apimachinery's JSON
    serializer, staging/src/k8s.io/apimachinery/pkg/runtime/serializer/json): clients match it exactly (lightkube
    turns only such an error into an ApiError; aiohttp's json_response would add "; charset=utf-8")."""
    return aiohttp.web.Response(body=json.dumps(obj).encode(), status=status,
                                headers={"Content-Type": "application/json"})

_CREATED_NAME = aiohttp.web.ResponseKey("created_name", str)
_ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]

def _user(raw: aiohttp.web.BaseRequest) -> str:
    """The request's user: its bearer token (each kubeconfig of `EmulatedAPI.write_kubeconfig` has its own)."""
    return raw.headers.get("Authorization", "").removeprefix("Bearer ").strip() or "anonymous"


@dataclass
class Route:
    group: str
    version: str
    plural: str
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None


def parse_route(path: str, known_plurals: Iterable[str]) -> Route | None:
    """Parse an object URL; None for discovery and anything else kmock should answer."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if not rest:
        return None
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] in known_plurals:
        namespace, rest = rest[1], rest[2:]
    plural, name, sub = rest[0], (rest[1] if len(rest) > 1 else None), ("/".join(rest[2:]) or None)
    return Route(group, version, plural, namespace, name, sub)


def _verb(method: str, route: Route, params: dict[str, str]) -> str:
    if method == "GET":
        if params.get("watch") in ("true", "1"):
            return "watch"
        return "get" if route.name else "list"
    if method == "DELETE":
        return "delete" if route.name else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


class EmulatedKubernetes(kmock.KubernetesScaffold):
    """kmock's Kubernetes scaffold (server, discovery, error bodies) with a real object store in front."""

    def __init__(self, store: Store, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        object.__setattr__(self, "_store", store)
        object.__setattr__(self, "request_log", [])
        object.__setattr__(self, "closing", False)
        #: Users cut off from the server (`EmulatedAPI.connection_lost`): their watch streams end, their requests wait.
        object.__setattr__(self, "cut_off", set())
        #: (user, resource, resourceVersion) of every watch refused with 410 Gone, for tests to check the path ran.
        object.__setattr__(self, "expired_watches", [])

    def sync_discovery(self) -> None:
        """Declare every served type to kmock's discovery (called whenever the set changes)."""
        self.resources.clear()
        for rt in self._store.types.values():
            self.resources[kmock.resource(rt.group, rt.version, rt.plural)] = kmock.ResourceInfo(
                kind=rt.kind, namespaced=rt.namespaced, singular=rt.singular or rt.kind.lower(),
                verbs=_ALL_VERBS, shortnames=rt.short_names, categories=rt.categories,
                subresources={"status"} if rt.has_status else set(),
            )

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        store: Store = self._store
        route = parse_route(raw.path, {rt.plural for rt in store.types.values()})
        if route is None:
            if raw.path != "/" and raw.path.endswith("/"):  # the official client asks for `/apis/`
                raw = raw.clone(rel_url=raw.rel_url.with_path(raw.path.rstrip("/")))
            return await super().__call__(raw)  # discovery, /version, unknown endpoints: kmock
        params = dict(raw.query)
        user = _user(raw)
        while user in self.cut_off and not self.closing:  # no answer until the connection is back
            await asyncio.sleep(0.05)
        status, error, created_name, started = 200, None, None, time.time()
        try:
            if self.closing:
                raise ApiError(503, "ServiceUnavailable", "the server is shutting down")
            response = await self._serve(raw, route, params)
            status = response.status
            created_name = response.get(_CREATED_NAME)
            return response
        except ApiError as e:
            status, error = e.code, e.message
            return _json(e.status(), e.code)
        except Exception as e:  # an emulator bug: answer like the real server's 500, keep serving
            status, error = 500, repr(e)
            return _json(ApiError(500, "InternalError", f"emulator error: {e!r}").status(), 500)
        finally:
            self.request_log.append(LoggedRequest(
                method=raw.method, path=raw.path, verb=_verb(raw.method, route, params), group=route.group,
                version=route.version, resource=route.plural, subresource=route.subresource,
                namespace=route.namespace, name=route.name or created_name, user=user, status=status, error=error,
                time=time.time(), duration=time.time() - started))

    async def _serve(self, raw: aiohttp.web.BaseRequest, route: Route, params: dict[str, str]
                     ) -> aiohttp.web.StreamResponse:
        store: Store = self._store
        rt = store.type_for(route.group, route.version, route.plural)
        if rt.namespaced is False and route.namespace:
            raise ApiError(404, "NotFound", f"{rt.qualified} is not namespaced")
        if rt.namespaced and route.name and not route.namespace and raw.method != "GET":
            raise ApiError(404, "NotFound", f"{rt.qualified} is namespaced: use /namespaces/<ns>/{rt.plural}/<name>")
        verb = _verb(raw.method, route, params)
        if verb in ("list", "watch", "deletecollection"):
            refuse_unsupported_field_labels(rt, params.get("fieldSelector"))
        if verb == "watch":
            return await self._watch(raw, rt, route, params)
        body: Any = None
        if raw.method in ("POST", "PUT", "PATCH"):
            text = await raw.text()
            ctype = raw.headers.get("Content-Type", "application/json").split(";")[0].strip()
            try:
                body = yaml.safe_load(text) if ctype == "application/apply-patch+yaml" else json.loads(text or "null")
            except (ValueError, yaml.YAMLError) as e:
                raise ApiError(400, "BadRequest", f"cannot parse the request body: {e}") from e
        created = False
        with store.lock:
            types_before = len(store.types)
            if verb == "get":
                result: Any = store.get(rt, route.namespace, route.name or "")
            elif verb == "list":
                items = store.list(rt, route.namespace, params.get("labelSelector"), params.get("fieldSelector"))
                result = {"apiVersion": rt.api_version, "kind": f"{rt.kind}List",
                          "metadata": {"resourceVersion": str(store.rv)}, "items": items}
            elif verb == "create":
                if route.name or route.subresource:
                    raise ApiError(405, "MethodNotAllowed", "POST is only allowed on a collection")
                result = store.create(rt, route.namespace, body, dry_run="dryRun" in params)
                created = "dryRun" not in params
            elif verb == "update":
                result = store.replace(rt, route.namespace, route.name or "", body, route.subresource)
            elif verb == "patch":
                result = self._patch(rt, route, body, ctype)
            elif verb == "delete":
                opts = body if isinstance(body, dict) else {}
                policy = params.get("propagationPolicy") or opts.get("propagationPolicy")
                result = store.delete(rt, route.namespace, route.name or "", policy)
            elif verb == "deletecollection":
                items = store.list(rt, route.namespace, params.get("labelSelector"), params.get("fieldSelector"))
                for o in items:
                    store.delete(rt, o["metadata"].get("namespace"), o["metadata"]["name"])
                result = {"apiVersion": rt.api_version, "kind": f"{rt.kind}List",
                          "metadata": {"resourceVersion": str(store.rv)}, "items": items}
            else:
                raise ApiError(405, "MethodNotAllowed", f"{raw.method} is not supported")
            if len(store.types) != types_before or rt.kind == "CustomResourceDefinition":
                self.sync_discovery()
            result = copy.deepcopy(result)
        response = _json(result, 201 if created else 200)
        if created:
            response[_CREATED_NAME] = result["metadata"]["name"]  # logged: a create's URL has no name
        return response

    def _patch(self, rt: ResourceType, route: Route, body: Any, ctype: str) -> dict[str, Any]:
        store: Store = self._store
        new = patched(rt, store.get(rt, route.namespace, route.name or ""), body, ctype)
        # The patch is applied to the current object, so the result carries its resourceVersion unless the patch
        # itself sets one (a merge patch's metadata.resourceVersion, a JSON patch's replace of it): only then can it
        # be stale, and a stale one is a 409 Conflict, whatever the patch type (patch.go applies the patch inside
        # the registry's GuaranteedUpdate, which compares resourceVersions).
        return store.replace(rt, route.namespace, route.name or "", new, route.subresource, check_rv=True)

    async def _watch(self, raw: aiohttp.web.BaseRequest, rt: ResourceType, route: Route, params: dict[str, str]
                     ) -> aiohttp.web.StreamResponse:
        store: Store = self._store
        watcher = Watcher(rt, route.namespace, route.name, params.get("labelSelector"), params.get("fieldSelector"),
                          user=_user(raw))
        since = params.get("resourceVersion") or ""
        initial = params.get("sendInitialEvents") == "true"
        backlog: list[dict[str, Any]] = []
        with store.lock:
            store.watchers.append(watcher)
            if since in ("", "0") or initial:
                backlog = [{"type": "ADDED", "object": copy.deepcopy(o)}
                           for o in store.list(rt, route.namespace, watcher.labels, watcher.fields)
                           if watcher.wants(o)]
                if initial:
                    backlog.append({"type": "BOOKMARK", "object": {
                        "kind": rt.kind, "apiVersion": rt.api_version,
                        "metadata": {"resourceVersion": str(store.rv),
                                     "annotations": {"k8s.io/initial-events-end": "true"}}}})
            else:
                try:
                    since_rv = int(since)
                except ValueError:
                    since_rv = -1
                oldest = store.history[0][0] if store.history else store.rv
                if since_rv < store.history_floor:  # the server restarted since (Store.forget_history)
                    oldest = store.history_floor + 1
                if since_rv < 0 or since_rv < store.history_floor or (
                        since_rv < oldest - 1 and len(store.history) == store.history.maxlen):
                    # An ERROR event in a 200 stream, not an HTTP error: the cacher answers a watch it cannot serve
                    # with `newErrWatcher(err)` (k8s.io/apiserver pkg/storage/cacher/cacher.go), and the error is
                    # watch_cache.go's `NewResourceExpired("too old resource version: %d (%d)")`, 410 "Expired".
                    backlog = [{"type": "ERROR", "object": ApiError(410, "Expired", f"too old resource version: "
                                                                    f"{since} ({oldest - 1})").status()}]
                    self.expired_watches.append((_user(raw), rt.plural, since))
                else:
                    backlog = [{"type": kind, "object": copy.deepcopy(obj)} for rv, t, kind, obj in store.history
                               if (t.group, t.plural) == (rt.group, rt.plural) and rv > since_rv and watcher.wants(obj)]
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        deadline = time.monotonic() + timeout if timeout else None
        try:
            await response.prepare(raw)
            for event in backlog:
                await response.write(json.dumps(event).encode() + b"\n")
            if backlog and backlog[0]["type"] == "ERROR":
                return response
            while not self.closing and watcher.user not in self.cut_off:
                wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
                if wait <= 0:
                    break
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), wait)
                except TimeoutError:
                    continue
                if event is None:  # the server is shutting down (api.py `_serve`): end the stream now
                    break
                if watcher.user in self.cut_off:  # the connection is gone: this event never reaches the client
                    break
                await response.write(json.dumps(event).encode() + b"\n")
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with store.lock:
                if watcher in store.watchers:
                    store.watchers.remove(watcher)
        return response
