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

Modules by concern: `resources` (types, errors, the request log's entries), `selectors` (label and field
selectors), `patch` (merge and JSON patches), `schema` (CRD checks, pruning, defaults, validation, CEL), `store`
(objects, resource versions, watch events, garbage collection), `server` (routes and the kmock scaffold) and `api`
(`emulated_api`, `EmulatedAPI`, kubeconfigs, `RemoteAPI`).
"""

from .api import EmulatedAPI, RemoteAPI, api_client, emulated_api
from .patch import json_patch, merge_patch
from .resources import BUILTIN_TYPES, ApiError, LoggedRequest, ResourceType
from .schema import prune
from .selectors import field_selector_matches, label_selector_matches
from .server import EmulatedKubernetes, Route, parse_route
from .store import Store

__all__ = [
    "BUILTIN_TYPES", "ApiError", "EmulatedAPI", "EmulatedKubernetes", "LoggedRequest", "RemoteAPI", "ResourceType",
    "Route", "Store", "api_client", "emulated_api", "field_selector_matches", "json_patch", "label_selector_matches",
    "merge_patch", "parse_route", "prune",
]
