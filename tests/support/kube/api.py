"""The handle a test holds: `emulated_api` runs the server on 127.0.0.1 in a background thread and yields an
`EmulatedAPI` (clients, kubeconfigs, the request log, stored objects); `RemoteAPI` is the part a controller in
another process needs."""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kmock
import yaml

from support import kuberay_crds

from .resources import BUILTIN_TYPES, LoggedRequest, ResourceType
from .server import EmulatedKubernetes
from .store import Store


class EmulatedAPI:
    """A running emulated API server; see the package docstring (support/kube/__init__.py)."""

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

    @contextmanager
    def connection_lost(self, user: str) -> Iterator[None]:
        """`user` loses the API server while the block runs, and finds it restarted after: its watch streams end at
        once (no event from the block reaches it), its requests wait for the block to end, and then every watch
        that resumes from a resourceVersion older than now gets `410 Gone` (`Store.forget_history`), so it has to
        list again. What an operator sees when its API server restarts while the rest of the cluster (KubeRay, a
        user with kubectl, on another API server of the control plane) goes on."""
        self.handler.cut_off.add(user)
        try:
            deadline = time.monotonic() + 10
            while any(w.user == user for w in list(self.store.watchers)):  # each stream ends within a second
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the watch streams of {user} did not end")
                time.sleep(0.05)
            yield
        finally:
            self.store.forget_history()
            self.handler.cut_off.discard(user)

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
        """Create a CRD from a YAML file through the API (as `kubectl apply -f` would: the document as JSON)."""
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: pure Python takes ~1 s for Graft's CRD
        with Path(path).open() as f:
            return self.create_crd(yaml.load(f, Loader=loader), user)  # noqa: S506 (a safe loader)

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
        with store.lock:
            streams = list(store.watchers)
        for watcher in streams:  # woken now, not at their next 1 s look at `closing`
            watcher.queue.put_nowait(None)
        give_up = time.monotonic() + 1.2
        while store.watchers and time.monotonic() < give_up:
            await asyncio.sleep(0.01)


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
