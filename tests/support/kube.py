"""An emulated Kubernetes API server for tests: kmock's server and discovery, plus the object semantics
of a real kube-apiserver that kmock 0.8 lacks.

kmock (by kopf's author) serves the HTTP layer: the aiohttp test server, API discovery (`/api`, `/apis`,
`/api/v1`, `/apis/<group>/<version>`) from declared resources, and Kubernetes-style error bodies. Object
requests are answered by this module's store instead of kmock's emulator, because the gaps listed in
DESIGN.md ("Testing without a cluster") sit in exactly that part: 201 on create with the created object,
uid / resourceVersion / generation (bumped on spec changes only) / creationTimestamp, namespace from the
URL, generateName, status-subresource separation, PUT, label and field selectors, `GET
/api/v1/namespaces`, watch streams that resume from a resourceVersion, finalizers, ownerReference
garbage collection, CRD schema validation (openAPIV3Schema through jsonschema, x-kubernetes-validations
through cel-python) with pruning of unknown fields and the schema's defaults, CRDs themselves checked as the
API server checks them (support/crdcheck.py: a CRD a real server refuses gets the same 422), KubeRay's real
RayJob and RayCluster CRDs installed at start, 415 for strategic-merge patches of custom resources,
optimistic concurrency (stale resourceVersion -> 409, failed JSON-patch `test` -> 422), and no-op writes that
leave the resourceVersion alone. Not modelled: RBAC enforcement (the request log is audited instead),
admission webhooks, field managers / server-side apply semantics (apply patches merge), pagination.

The server runs on 127.0.0.1 in a background thread with its own event loop, so the official
`kubernetes` client in the test and a real `kopf` process (through a kubeconfig) talk HTTP to it::

    with emulated_api(namespaces=["graft"]) as api:
        api.kubeconfig_path          # a kubeconfig for user "admin"
        api.write_kubeconfig(p, user="operator")   # each user is a bearer token, logged per request
        api.client()                 # kubernetes.client.ApiClient for user "admin"
        api.request_log              # [LoggedRequest(method, path, verb, group, resource, ...)]
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp.web
import jsonschema
import kmock
import yaml

from graft.api.crd import jsonschema_for
from support import crdcheck, kuberay_crds

# ------------------------------------------------------------------------------------------- types


@dataclass
class ResourceType:
    """What the server knows about one served resource (from a built-in table or an applied CRD)."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    has_status: bool = False
    custom: bool = False  # custom resources refuse strategic-merge patches, like the real server
    schema: dict[str, Any] | None = None  # openAPIV3Schema: pruning and validation
    validator: Any = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


_CREATED_NAME = aiohttp.web.ResponseKey("created_name", str)
_ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]

#: Built-in resources a kopf operator and the tests use. RayJob and RayCluster are not among them: they come
#: from KubeRay's real CRDs, installed through the API at start (see `emulated_api`).
BUILTIN_TYPES = [
    ResourceType("", "v1", "namespaces", "Namespace", namespaced=False, singular="namespace", short_names=("ns",),
                 has_status=True),
    ResourceType("", "v1", "events", "Event", singular="event", short_names=("ev",)),
    ResourceType("", "v1", "configmaps", "ConfigMap", singular="configmap", short_names=("cm",)),
    ResourceType("", "v1", "secrets", "Secret", singular="secret"),
    ResourceType("", "v1", "pods", "Pod", singular="pod", short_names=("po",), has_status=True),
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount", singular="serviceaccount", short_names=("sa",)),
    ResourceType("events.k8s.io", "v1", "events", "Event", singular="event", short_names=("ev",)),
    ResourceType("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
                 namespaced=False, singular="customresourcedefinition", short_names=("crd", "crds"),
                 has_status=True),
]


@dataclass(frozen=True)
class LoggedRequest:
    """One API request as the audit sees it: the RBAC verb and the resource it touched."""

    method: str
    path: str
    verb: str  # get, list, watch, create, update, patch, delete, deletecollection
    group: str
    version: str
    resource: str
    subresource: str | None
    namespace: str | None
    name: str | None
    user: str
    status: int
    error: str | None = None  # the Status message of a failed request
    time: float = 0.0  # when the answer was ready (time.time())
    duration: float = 0.0  # seconds the server took to answer (a watch: how long it streamed)

    @property
    def rbac_resource(self) -> str:
        """`resource` or `resource/subresource`, as RBAC rules spell it."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


class ApiError(Exception):
    """An error answered as a Kubernetes `Status` object."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": self.code,
                "reason": self.reason, "message": self.message, "details": self.details}


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# ------------------------------------------------------------------------------------ selectors


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


# -------------------------------------------------------------------------------------- patching


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


# ---------------------------------------------------------------------------- schema: prune+check


def prune(obj: Any, schema: dict[str, Any] | None, *, root: bool = False) -> Any:
    """Drop fields the structural schema does not declare, as the API server does silently (a copy;
    apiextensions-apiserver/pkg/apiserver/schema/pruning/algorithm.go, transcribed in support/crdcheck.py)."""
    if schema is None:
        return obj
    pruned = crdcheck.prune(obj, schema, root=root)
    if root and isinstance(obj, dict) and "metadata" in obj:
        pruned["metadata"] = obj["metadata"]  # the same dict: callers go on filling it in
    return pruned


def _field_path(error: jsonschema.ValidationError) -> str:
    out = ""
    for p in error.absolute_path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<root>"


_CEL_CACHE: dict[tuple[int, str, str, str | None], list[tuple[str, str]]] = {}


def _cel_violations(schema: dict[str, Any], obj: dict[str, Any], old: dict[str, Any] | None = None
                    ) -> list[tuple[str, str]]:
    """x-kubernetes-validations (CEL) rules, evaluated with cel-python as the API server would; with `old` (an
    update) transition rules compare against it (`oldSelf`), on a create they are skipped.

    cel-python takes tens of milliseconds per object, the real server microseconds; results are cached per
    top-level field value (a status write re-checks an unchanged spec) so that the emulator's speed does not
    stand in for the operator's in benchmarks."""
    from support.cel import _NO_OLD as NO_OLD
    from support.cel import cel_violations

    out: list[tuple[str, str]] = []
    props = schema.get("properties") or {}
    olds = old if isinstance(old, dict) else {}
    for key, value in obj.items():
        if key == "metadata" or key not in props:
            continue
        old_value = olds.get(key, NO_OLD)
        cache_key = (id(schema), key, json.dumps(value, sort_keys=True),
                     None if old_value is NO_OLD else json.dumps(old_value, sort_keys=True))
        if cache_key not in _CEL_CACHE:
            if len(_CEL_CACHE) > 10_000:
                _CEL_CACHE.clear()
                _CEL_SCHEMAS.clear()
            _CEL_SCHEMAS[id(schema)] = schema  # keeps the id from being reused by another schema while cached
            _CEL_CACHE[cache_key] = cel_violations(props[key], value, key, old_value)
        out += _CEL_CACHE[cache_key]
    return out


_CEL_SCHEMAS: dict[int, dict[str, Any]] = {}


# -------------------------------------------------------------------------------------- the store


@dataclass
class _Watcher:
    rt: ResourceType
    namespace: str | None
    name: str | None
    labels: str | None
    fields: str | None
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)

    def wants(self, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata", {})
        return (
            (self.namespace is None or meta.get("namespace") == self.namespace)
            and (self.name is None or meta.get("name") == self.name)
            and label_selector_matches(self.labels, meta.get("labels"))
            and field_selector_matches(self.fields, obj)
        )


#: CRD checks and schema validators are pure functions of the CRD; KubeRay's CRDs are large, so every
#: emulated server of a test session shares them (by a digest of the CRD's name and spec).
_CRD_ERRORS: dict[str, list[crdcheck.FieldError]] = {}
_VALIDATORS: dict[str, Any] = {}


def _crd_digest(crd: dict[str, Any]) -> str:
    import hashlib

    key = json.dumps([crd.get("metadata", {}).get("name"), crd.get("spec")], sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()


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
        self.watchers: list[_Watcher] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        #: Called as fn(time.time(), event type, resource type, object) at every change (benchmarks).
        self.listeners: list[Any] = []

    # -- types -----------------------------------------------------------------------------------

    def add_type(self, rt: ResourceType, digest: str | None = None) -> None:
        if rt.schema is not None:
            key = f"{digest}/{rt.version}" if digest else None
            if key is None or key not in _VALIDATORS:
                validator = jsonschema.Draft4Validator(jsonschema_for(rt.schema, strict_fields=False))
                if key is None:
                    rt.validator = validator
                    self.types[(rt.group, rt.version, rt.plural)] = rt
                    return
                _VALIDATORS[key] = validator
            rt.validator = _VALIDATORS[key]
        self.types[(rt.group, rt.version, rt.plural)] = rt

    def refuse_invalid_crd(self, crd: dict[str, Any], old: dict[str, Any] | None = None) -> str:
        """Apply the API server's checks to a CRD being created (or replacing `old`): 422 Invalid with the
        server's message and causes when it would refuse it (support/crdcheck.py). Returns the CRD's digest."""
        digest = _crd_digest(crd)
        if digest not in _CRD_ERRORS:
            _CRD_ERRORS[digest] = crdcheck.check_crd(crd)
        errors = list(_CRD_ERRORS[digest])
        if old is not None:
            # validation.go validateCustomResourceDefinitionSpecUpdate: these name the stored resource.
            for path, new_value, old_value in (
                    ("spec.group", crd["spec"].get("group"), old["spec"].get("group")),
                    ("spec.names.plural", crd["spec"].get("names", {}).get("plural"),
                     old["spec"].get("names", {}).get("plural"))):
                if new_value != old_value:
                    errors.append(crdcheck.FieldError("FieldValueInvalid", path, new_value, "field is immutable"))
        if errors:
            status = crdcheck.invalid_status(crd.get("metadata", {}).get("name", ""), errors)
            raise ApiError(422, "Invalid", status["message"], status["details"])
        return digest

    def type_for(self, group: str, version: str, plural: str) -> ResourceType:
        rt = self.types.get((group, version, plural))
        if rt is None:
            gv = f"{group}/{version}" if group else version
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({plural} in {gv})")
        return rt

    def _types_from_crd(self, crd: dict[str, Any]) -> list[ResourceType]:
        spec = crd.get("spec", {})
        names = spec.get("names", {})
        out = []
        for v in spec.get("versions", []):
            if not v.get("served", True):
                continue
            out.append(ResourceType(
                group=spec["group"], version=v["name"], plural=names["plural"], kind=names["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced", singular=names.get("singular", ""),
                short_names=tuple(names.get("shortNames", [])), categories=tuple(names.get("categories", [])),
                has_status="status" in (v.get("subresources") or {}), custom=True,
                schema=(v.get("schema") or {}).get("openAPIV3Schema"),
            ))
        return out

    # -- objects ---------------------------------------------------------------------------------

    @staticmethod
    def key(rt: ResourceType, namespace: str | None, name: str) -> tuple[str, str, str | None, str]:
        return (rt.group, rt.plural, namespace if rt.namespaced else None, name)

    def _bump(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _emit(self, rt: ResourceType, kind: str, obj: dict[str, Any]) -> None:
        rv = int(obj["metadata"]["resourceVersion"])
        snapshot = copy.deepcopy(obj)
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
        w = _Watcher(rt, namespace, None, labels, fields, queue=None)  # type: ignore[arg-type]
        return [o for (g, p, _ns, _n), o in sorted(self.objects.items(), key=lambda kv: str(kv[0]))
                if (g, p) == (rt.group, rt.plural) and w.wants(o)]

    def _check(self, rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None = None) -> dict[str, Any]:
        """Prune, default and validate against the CRD schema; 422 naming the fields, as the API server does."""
        if rt.schema is None:
            return obj
        obj = prune(obj, rt.schema, root=True)
        # Defaults from the schema fill in what the object leaves out, before validation (KubeRay's schema
        # defaults e.g. workerGroupSpecs[].minReplicas/maxReplicas, which it also requires).
        meta = obj.get("metadata")
        obj = crdcheck.apply_defaults(obj, rt.schema)
        if meta is not None:
            obj["metadata"] = meta  # the same dict: callers go on filling it in
        errors = sorted(rt.validator.iter_errors({k: v for k, v in obj.items() if k != "metadata"}),
                        key=lambda e: list(e.absolute_path))
        causes = [{"reason": "FieldValueInvalid", "field": _field_path(e), "message": e.message} for e in errors]
        if not causes:
            causes = [{"reason": "FieldValueInvalid", "field": path, "message": message}
                      for path, message in _cel_violations(rt.schema, obj, old)]
        if causes:
            name = obj.get("metadata", {}).get("name", "")
            text = "; ".join(f"{c['field']}: Invalid value: {c['message']}" for c in causes)
            raise ApiError(422, "Invalid", f'{rt.kind}.{rt.group} "{name}" is invalid: {text}',
                           {"name": name, "group": rt.group, "kind": rt.kind, "causes": causes})
        return obj

    def create(self, rt: ResourceType, namespace: str | None, body: dict[str, Any], dry_run: bool = False
               ) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        obj = copy.deepcopy(body)
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
            digest = self.refuse_invalid_crd(obj)  # what the real server refuses, with its message
            new_types = self._types_from_crd(obj)
        obj = self._check(rt, obj)
        # Only now the name is looked up: the server validates before storage answers AlreadyExists
        # (apiserver/pkg/registry/generic/registry/store.go Create: BeforeCreate, then the storage's Create).
        key = self.key(rt, namespace, meta["name"])
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f'{rt.qualified} "{meta["name"]}" already exists',
                           {"name": meta["name"], "group": rt.group, "kind": rt.plural})
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
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
                                             "lastTransitionTime": _now(), "message": "the initial names have been "
                                             "accepted"}]}
        self._emit(rt, "ADDED", obj)
        return obj

    def replace(self, rt: ResourceType, namespace: str | None, name: str, new: dict[str, Any],
                subresource: str | None, check_rv: bool = True) -> dict[str, Any]:
        """Store `new` as the next state of an existing object (PUT, or the result of a PATCH)."""
        old = self.get(rt, namespace, name)
        if not isinstance(new, dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        new = copy.deepcopy(new)
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
            result = {k: copy.deepcopy(v) for k, v in old.items() if k != "status"}
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
                    result["status"] = copy.deepcopy(old["status"])
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
        result = self._check(rt, result, old)
        crd_digest = None
        if rt.kind == "CustomResourceDefinition" and subresource is None:
            crd_digest = self.refuse_invalid_crd(result, old)
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
            for t in self._types_from_crd(old):
                self.types.pop((t.group, t.version, t.plural), None)
            for t in self._types_from_crd(result):
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
                obj = copy.deepcopy(obj)
                obj["metadata"].update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0,
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
            for t in self._types_from_crd(obj):
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


# ------------------------------------------------------------------------------------------ routes


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
        user = raw.headers.get("Authorization", "").removeprefix("Bearer ").strip() or "anonymous"
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
            return aiohttp.web.json_response(e.status(), status=e.code)
        except Exception as e:  # an emulator bug: answer like the real server's 500, keep serving
            status, error = 500, repr(e)
            return aiohttp.web.json_response(
                ApiError(500, "InternalError", f"emulator error: {e!r}").status(), status=500)
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
        response = aiohttp.web.json_response(result, status=201 if created else 200)
        if created:
            response[_CREATED_NAME] = result["metadata"]["name"]  # logged: a create's URL has no name
        return response

    def _patch(self, rt: ResourceType, route: Route, body: Any, ctype: str) -> dict[str, Any]:
        store: Store = self._store
        current = store.get(rt, route.namespace, route.name or "")
        if ctype == "application/json-patch+json":
            if not isinstance(body, list):
                raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
            new = json_patch(current, body)
        elif ctype in ("application/merge-patch+json", "application/apply-patch+yaml"):
            new = merge_patch(current, body)
        elif ctype == "application/strategic-merge-patch+json":
            if rt.custom:
                raise ApiError(415, "UnsupportedMediaType",
                               f"the body of the request was in an unknown format - accepted media types include: "
                               f"application/json-patch+json, application/merge-patch+json, "
                               f"application/apply-patch+yaml (strategic merge patch is not supported for "
                               f"{rt.qualified})")
            new = merge_patch(current, body)  # approximation: lists are replaced, not merged by key
        else:
            raise ApiError(415, "UnsupportedMediaType", f"unsupported patch content type {ctype!r}")
        # A patch carries a resourceVersion only when the client asks for optimistic concurrency.
        check = isinstance(body, dict) and bool((body.get("metadata") or {}).get("resourceVersion"))
        return store.replace(rt, route.namespace, route.name or "", new, route.subresource, check_rv=check)

    async def _watch(self, raw: aiohttp.web.BaseRequest, rt: ResourceType, route: Route, params: dict[str, str]
                     ) -> aiohttp.web.StreamResponse:
        store: Store = self._store
        watcher = _Watcher(rt, route.namespace, route.name, params.get("labelSelector"), params.get("fieldSelector"))
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
                if since_rv < 0 or (since_rv < oldest - 1 and len(store.history) == store.history.maxlen):
                    backlog = [{"type": "ERROR", "object": ApiError(410, "Expired", f"too old resource version: "
                                                                    f"{since} ({oldest})").status()}]
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
            while not self.closing:
                wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
                if wait <= 0:
                    break
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), wait)
                except TimeoutError:
                    continue
                await response.write(json.dumps(event).encode() + b"\n")
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with store.lock:
                if watcher in store.watchers:
                    store.watchers.remove(watcher)
        return response


# ---------------------------------------------------------------------------------- the handle


class EmulatedAPI:
    """A running emulated API server; see the module docstring."""

    def __init__(self, store: Store, handler: EmulatedKubernetes, url: str, workdir: Path):
        self.store, self.handler, self.url, self._workdir = store, handler, url, workdir
        self.kubeconfig_path = self.write_kubeconfig(workdir / "kubeconfig-admin.yaml", user="admin")

    @property
    def request_log(self) -> list[LoggedRequest]:
        """Every object request so far (discovery requests are not logged)."""
        return list(self.handler.request_log)

    def requests_by(self, user: str) -> list[LoggedRequest]:
        """The requests made with `user`'s kubeconfig."""
        return [r for r in self.handler.request_log if r.user == user]

    def write_kubeconfig(self, path: str | Path, user: str = "admin") -> Path:
        """Write a kubeconfig for this server; `user` is the bearer token, recorded in the request log."""
        path = Path(path)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulated", "cluster": {"server": self.url}}],
            "users": [{"name": user, "user": {"token": user}}],
            "contexts": [{"name": f"{user}@emulated", "context": {"cluster": "emulated", "user": user,
                                                                    "namespace": "default"}}],
            "current-context": f"{user}@emulated",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def client(self, user: str = "admin"):
        """A `kubernetes.client.ApiClient` for this server."""
        return api_client(self.url, user)

    def apply_crd(self, path: str | Path, user: str = "admin") -> dict[str, Any]:
        """Create a CRD from a YAML file through the API (as `kubectl apply -f` would)."""
        import kubernetes

        crd = yaml.safe_load(Path(path).read_text())
        with self.client(user) as api:
            return kubernetes.client.ApiextensionsV1Api(api).create_custom_resource_definition(crd).to_dict()

    def create_crd(self, crd: dict[str, Any], user: str = "admin") -> dict[str, Any]:
        """POST a CRD as JSON (as `kubectl create -f` would), without the client's typed models, which take
        seconds to build for a schema of KubeRay's size. Raises with the server's Status when refused."""
        import urllib.error
        import urllib.request

        request = urllib.request.Request(  # noqa: S310 (our own server's http URL)
            f"{self.url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions", data=json.dumps(crd).encode(),
            method="POST", headers={"Content-Type": "application/json", "Authorization": f"Bearer {user}"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # http://127.0.0.1 only
        try:
            with opener.open(request, timeout=120) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"creating the CRD {crd.get('metadata', {}).get('name')} failed: {e.code} "
                               f"{e.read().decode(errors='replace')}") from e

    def objects(self, group: str, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """A snapshot of the stored objects of one resource (for assertions)."""
        with self.store.lock:
            return [copy.deepcopy(o) for (g, p, ns, _), o in self.store.objects.items()
                    if (g, p) == (group, plural) and (namespace is None or ns == namespace)]


def api_client(url: str, user: str = "admin"):
    """A `kubernetes.client.ApiClient` for an emulated API server at `url`, authenticated as `user`."""
    import kubernetes

    config = kubernetes.client.Configuration()
    config.host = url
    config.api_key = {"authorization": user}
    config.api_key_prefix = {"authorization": "Bearer"}
    return kubernetes.client.ApiClient(config)


class RemoteAPI:
    """The part of `EmulatedAPI` a controller in another process needs: a client for the server's URL."""

    def __init__(self, url: str):
        self.url = url

    def client(self, user: str = "admin"):
        return api_client(self.url, user)


async def _serve(store: Store, handler: EmulatedKubernetes, host: str, port: int | None, ready: threading.Event,
                 stop: asyncio.Event, box: dict[str, Any]) -> None:
    async with handler, kmock.Server(handler, host=host, port=port) as server:
        box["url"] = f"http://{server.host}:{server.port}"
        ready.set()
        await stop.wait()
        handler.closing = True  # ends every watch stream so that shutdown does not wait for them
        await asyncio.sleep(1.2)


@contextmanager
def emulated_api(namespaces: Iterable[str] = ("default",), crds: Iterable[str | Path] = (),
                 port: int | None = None, workdir: str | Path | None = None, kuberay: bool = True
                 ) -> Iterator[EmulatedAPI]:
    """Run the emulated API server on 127.0.0.1 in a background thread; yields an `EmulatedAPI`.

    `namespaces` are created up front (plus `default`); `crds` are applied through the API. With `kuberay`
    (the default) KubeRay's real RayJob and RayCluster CRDs are installed first, through the API, as on a
    cluster with KubeRay: RayJobs are validated and pruned by KubeRay's own schema (support/kuberay_crds.py;
    it fails loudly when ../shared/kuberay/ is missing)."""
    import tempfile

    kuberay_docs = kuberay_crds.crds() if kuberay else []  # read first: a missing folder fails before any start
    store = Store()
    for rt in BUILTIN_TYPES:
        store.add_type(ResourceType(**{k: getattr(rt, k) for k in rt.__dataclass_fields__}))
    handler = EmulatedKubernetes(store)
    handler.sync_discovery()
    ready = threading.Event()
    box: dict[str, Any] = {}
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(_serve(store, handler, "127.0.0.1", port, ready, stop, box))
        except BaseException as e:  # surfaced to the caller through `box`
            box["error"] = e
            ready.set()

    thread = threading.Thread(target=run, name="emulated-kube-api", daemon=True)
    thread.start()
    if not ready.wait(30) or "error" in box:
        raise RuntimeError(f"emulated API server did not start: {box.get('error')!r}")
    store.loop = loop
    with tempfile.TemporaryDirectory(prefix="graft-kube-", dir=workdir) as tmp:
        api = EmulatedAPI(store, handler, box["url"], Path(tmp))
        try:
            import kubernetes

            with api.client() as client:
                core = kubernetes.client.CoreV1Api(client)
                for ns in dict.fromkeys(["default", *namespaces]):
                    core.create_namespace({"metadata": {"name": ns}})
            for doc in kuberay_docs:
                api.create_crd(doc)
            for crd in crds:
                api.apply_crd(crd)
            yield api
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(30)
