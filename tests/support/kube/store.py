"""The emulated API server's object store: objects, resource versions, watch events and their history, finalizers
and the garbage collector."""

from __future__ import annotations

import asyncio
import pickle
import random
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from . import schema
from .resources import ApiError, ResourceType, convert_on_write, now
from .selectors import field_paths, field_selector_matches, label_selector_matches


def _copy(obj: Any) -> Any:
    """A deep copy of a JSON document (dicts, lists, scalars): pickle's round trip, measured 1.5x faster than
    copy.deepcopy on KubeRay's RayJob CRD (the largest object the store keeps, copied on create and per event)."""
    return pickle.loads(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL))  # noqa: S301 (our own bytes, just made)


@dataclass
class Watcher:
    rt: ResourceType
    namespace: str | None
    name: str | None
    labels: str | None
    fields: str | None
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    user: str = ""  # who watches (the bearer token): `EmulatedAPI.connection_lost` ends one user's streams

    def __post_init__(self) -> None:
        self.field_paths = field_paths(self.rt)

    def wants(self, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata", {})
        return (
            (self.namespace is None or meta.get("namespace") == self.namespace)
            and (self.name is None or meta.get("name") == self.name)
            and label_selector_matches(self.labels, meta.get("labels"))
            and field_selector_matches(self.fields, obj, self.field_paths)
        )


class Store:
    """Objects by (group, plural, namespace, name); every change gets the next resourceVersion and an
    event, kept in a bounded history so that a watch can resume from a resourceVersion."""

    HISTORY = 200_000

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.types: dict[tuple[str, str, str], ResourceType] = {}
        self.objects: dict[tuple[str, str, str | None, str], dict[str, Any]] = {}
        self.rv = 1
        self.history: deque[tuple[int, ResourceType, str, dict[str, Any]]] = deque(maxlen=self.HISTORY)
        self.watchers: list[Watcher] = []
        #: Watches may resume from this resourceVersion on, not from an older one: a restarted API server's watch
        #: cache starts empty at the resourceVersion of its first list (see `forget_history`).
        self.history_floor = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        #: Called as fn(time.time(), event type, resource type, object) at every change (benchmarks).
        self.listeners: list[Any] = []

    # -- types -----------------------------------------------------------------------------------

    def add_type(self, rt: ResourceType, digest: str | None = None) -> None:
        schema.attach_validator(rt, digest)
        self.types[(rt.group, rt.version, rt.plural)] = rt

    def type_for(self, group: str, version: str, plural: str) -> ResourceType:
        rt = self.types.get((group, version, plural))
        if rt is None:
            gv = f"{group}/{version}" if group else version
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({plural} in {gv})")
        return rt

    def forget_history(self) -> int:
        """What a restarted API server knows of the past: its watch cache is filled by one list at the current
        resourceVersion and holds no events from before it, so a watch resuming from an older resourceVersion gets
        `410 Gone` ("too old resource version") and the client has to list again (k8s.io/apiserver
        pkg/storage/cacher/watch_cache.go: `Replace` empties the event buffer and sets `listResourceVersion`;
        `getAllEventsSinceLocked` refuses `resourceVersion < listResourceVersion` with `NewResourceExpired`).
        Returns the new floor."""
        with self.lock:
            self.history.clear()
            self.history_floor = self.rv
            return self.rv

    # -- objects ---------------------------------------------------------------------------------

    @staticmethod
    def key(rt: ResourceType, namespace: str | None, name: str) -> tuple[str, str, str | None, str]:
        return (rt.group, rt.plural, namespace if rt.namespaced else None, name)

    def _bump(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _emit(self, rt: ResourceType, kind: str, obj: dict[str, Any]) -> None:
        rv = int(obj["metadata"]["resourceVersion"])
        snapshot = _copy(obj)
        self.history.append((rv, rt, kind, snapshot))
        for listener in self.listeners:
            listener(time.time(), kind, rt, snapshot)
        for w in list(self.watchers):
            if (w.rt.group, w.rt.plural) == (rt.group, rt.plural) and w.wants(snapshot):
                w.queue.put_nowait({"type": kind, "object": snapshot})

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.objects.get(self.key(rt, namespace, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{rt.qualified} "{name}" not found',
                           {"name": name, "group": rt.group, "kind": rt.plural})
        return obj

    def list(self, rt: ResourceType, namespace: str | None, labels: str | None = None,
             fields: str | None = None) -> list[dict[str, Any]]:
        w = Watcher(rt, namespace, None, labels, fields, queue=None)  # type: ignore[arg-type]
        return [o for (g, p, _ns, _n), o in sorted(self.objects.items(), key=lambda kv: str(kv[0]))
                if (g, p) == (rt.group, rt.plural) and w.wants(o)]

    def create(self, rt: ResourceType, namespace: str | None, body: dict[str, Any], dry_run: bool = False
               ) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        obj = _copy(body)
        convert_on_write(rt, obj)
        obj.setdefault("apiVersion", rt.api_version)
        obj.setdefault("kind", rt.kind)
        if obj["kind"] != rt.kind or obj["apiVersion"] != rt.api_version:
            raise ApiError(400, "BadRequest", f"the API version/kind in the body ({obj['apiVersion']}/{obj['kind']}) "
                                              f"does not match the URL ({rt.api_version}/{rt.kind})")
        meta = obj.setdefault("metadata", {})
        if rt.namespaced:
            if meta.get("namespace") not in (None, namespace):
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the "
                                                  "namespace sent on the request")
            if namespace is None:
                raise ApiError(404, "NotFound", f"{rt.plural} must be created in a namespace")
            meta["namespace"] = namespace
            if ("", "namespaces", None, namespace) not in self.objects:
                raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found',
                               {"name": namespace, "kind": "namespaces"})
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, "Invalid", "metadata.name: Required value: name or generateName is required")
            alphabet = "bcdfghjklmnpqrstvwxz2456789"
            meta["name"] = meta["generateName"] + "".join(random.choice(alphabet) for _ in range(5))
        for k in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields"):
            meta.pop(k, None)
        if rt.has_status and rt.custom:
            obj.pop("status", None)  # the status subresource owns status; a create cannot set it
        if rt.kind == "CustomResourceDefinition":
            digest = schema.refuse_invalid_crd(obj)  # what the real server refuses, with its message
            new_types = schema.types_from_crd(obj)
        obj = schema.check(rt, obj)
        # Only now the name is looked up: the server validates before storage answers AlreadyExists
        # (apiserver/pkg/registry/generic/registry/store.go Create: BeforeCreate, then the storage's Create).
        key = self.key(rt, namespace, meta["name"])
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f'{rt.qualified} "{meta["name"]}" already exists',
                           {"name": meta["name"], "group": rt.group, "kind": rt.plural})
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
        if rt.kind == "Namespace":
            obj["status"] = {"phase": "Active"}
        if dry_run:
            meta["resourceVersion"] = str(self.rv)
            return obj
        meta["resourceVersion"] = self._bump()
        self.objects[key] = obj
        if rt.kind == "CustomResourceDefinition":
            for t in new_types:
                self.add_type(t, digest)
            obj["status"] = {"acceptedNames": obj["spec"]["names"],
                             "conditions": [{"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                                             "lastTransitionTime": now(), "message": "the initial names have been "
                                             "accepted"}]}
        self._emit(rt, "ADDED", obj)
        return obj

    def replace(self, rt: ResourceType, namespace: str | None, name: str, new: dict[str, Any],
                subresource: str | None, check_rv: bool = True) -> dict[str, Any]:
        """Store `new` as the next state of an existing object (PUT, or the result of a PATCH)."""
        old = self.get(rt, namespace, name)
        if not isinstance(new, dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        new = _copy(new)
        convert_on_write(rt, new)
        meta = new.setdefault("metadata", {}) or {}
        new["metadata"] = meta
        old_meta = old["metadata"]
        if meta.get("name", name) != name:
            raise ApiError(400, "BadRequest", f"the name of the object ({meta.get('name')}) does not match the name "
                                              f"on the URL ({name})")
        if check_rv and meta.get("resourceVersion") and meta["resourceVersion"] != old_meta["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {rt.qualified} "{name}": the object has '
                                            "been modified; please apply your changes to the latest version and try "
                                            "again", {"name": name, "group": rt.group, "kind": rt.plural})
        if subresource == "status":
            if not rt.has_status:
                raise ApiError(404, "NotFound", f"{rt.qualified} has no status subresource")
            # The status subresource changes status only; metadata and spec stay as they were.
            result = {k: _copy(v) for k, v in old.items() if k != "status"}
            if "status" in new:
                result["status"] = new["status"]
        elif subresource:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({subresource})")
        else:
            result = new
            result["apiVersion"], result["kind"] = old["apiVersion"], old["kind"]
            if rt.has_status:  # the main resource never changes status when there is a subresource
                result.pop("status", None)
                if "status" in old:
                    result["status"] = _copy(old["status"])
            for k in ("uid", "creationTimestamp", "namespace", "name", "deletionTimestamp", "generation"):
                if k in old_meta:
                    meta[k] = old_meta[k]
                else:
                    meta.pop(k, None)
            if old_meta.get("deletionTimestamp"):
                # Finalizers can only be removed once deletion has started, never added.
                added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
                if added:
                    raise ApiError(422, "Forbidden", f"no new finalizers can be added if the object is being deleted, "
                                                     f"found new finalizers {sorted(added)}")
        result = schema.check(rt, result, old)
        crd_digest = None
        if rt.kind == "CustomResourceDefinition" and subresource is None:
            crd_digest = schema.refuse_invalid_crd(result, old)
        meta = result["metadata"]
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if not meta.get("finalizers"):
            meta.pop("finalizers", None)
        if result == old:
            return old  # a no-op write changes nothing, not even the resourceVersion

        def body(o: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in o.items() if k not in ("metadata", "status")}

        if body(result) != body(old):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        meta["resourceVersion"] = self._bump()
        self.objects[self.key(rt, namespace, name)] = result
        if crd_digest is not None and result.get("spec") != old.get("spec"):
            for t in schema.types_from_crd(old):
                self.types.pop((t.group, t.version, t.plural), None)
            for t in schema.types_from_crd(result):
                self.add_type(t, crd_digest)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(rt, namespace, name)
        else:
            self._emit(rt, "MODIFIED", result)
        return result

    def delete(self, rt: ResourceType, namespace: str | None, name: str, propagation: str | None = None
               ) -> dict[str, Any]:
        obj = self.get(rt, namespace, name)
        meta = obj["metadata"]
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                obj = _copy(obj)
                obj["metadata"].update(deletionTimestamp=now(), deletionGracePeriodSeconds=0,
                                       resourceVersion=self._bump())
                self.objects[self.key(rt, namespace, name)] = obj
                self._emit(rt, "MODIFIED", obj)
            return obj
        return self._remove(rt, namespace, name, orphan=propagation == "Orphan")

    def _remove(self, rt: ResourceType, namespace: str | None, name: str, orphan: bool = False) -> dict[str, Any]:
        obj = self.objects.pop(self.key(rt, namespace, name))
        obj["metadata"]["resourceVersion"] = self._bump()
        self._emit(rt, "DELETED", obj)
        if rt.kind == "CustomResourceDefinition":
            for t in schema.types_from_crd(obj):
                self.types.pop((t.group, t.version, t.plural), None)
        if not orphan:
            self._collect_garbage()
        return obj

    def _collect_garbage(self) -> None:
        """Delete objects whose every owner is gone (the garbage collector's background propagation)."""
        uids = {o["metadata"]["uid"] for o in self.objects.values()}
        for (group, plural, ns, name), obj in list(self.objects.items()):
            owners = obj["metadata"].get("ownerReferences") or []
            if owners and not any(o.get("uid") in uids for o in owners):
                rt = next(t for t in self.types.values() if (t.group, t.plural) == (group, plural))
                if self.key(rt, ns, name) in self.objects:
                    self.delete(rt, ns, name)

