"""Which public async Kubernetes client the operator uses (issue 15): kubernetes_asyncio or lightkube.

Each client runs the operator's own call mix against the emulated API server, in a process of its own so that
its CPU time and memory are its own: per object, create (POST), get (GET), merge-patch (PATCH), list by label
(GET with labelSelector) and delete (DELETE, background propagation), 16 objects in flight at a time. The
baseline, in the same run, is the same requests through a bare aiohttp session (the least any client can do).

    .venv/bin/python bench/client_bench.py [--objects 400] [--rounds 3]

A candidate that is not installed in .venv is taken from `--extra-site` (a folder of site-packages, e.g. a
scratch venv's), so that trying a client does not change the locked environment.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NS = "bench"
CLIENTS = ("aiohttp", "kubernetes_asyncio", "lightkube")


def _rss_mb() -> float:
    """This process's peak RSS (VmHWM: getrusage's ru_maxrss would carry the parent's peak over exec)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def _body(i: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"cm-{i}", "namespace": NS, "labels": {"app": "bench", "idx": str(i)}},
            "data": {"spec.json": json.dumps({"i": i, "stages": ["FrozenFeatures", "Head"]})}}


async def _by_path(call: Any, base: str, i: int) -> None:
    """One object's requests through a client that takes a method and a path (the baseline, kubernetes_asyncio)."""
    await call("POST", base, _body(i))
    await call("GET", f"{base}/cm-{i}")
    await call("PATCH", f"{base}/cm-{i}", {"data": {"phase": "Running"}}, "application/merge-patch+json")
    await call("GET", base, labelSelector=f"app=bench,idx={i}")
    await call("DELETE", f"{base}/cm-{i}", {"propagationPolicy": "Background"})


async def _aiohttp(kubeconfig: dict[str, Any]):
    import aiohttp

    server = kubeconfig["clusters"][0]["cluster"]["server"]
    token = kubeconfig["users"][0]["user"]["token"]
    session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"})
    base = f"{server}/api/v1/namespaces/{NS}/configmaps"

    async def call(method: str, url: str, body: Any = None, ctype: str = "application/json", **params: str):
        async with session.request(method, url, json=body, params=params or None,
                                   headers={"Content-Type": ctype}) as r:
            r.raise_for_status()
            return await r.json()

    return functools.partial(_by_path, call, base), session.close


async def _kubernetes_asyncio(kubeconfig_path: str):
    from kubernetes_asyncio import client, config

    cfg = client.Configuration()
    await config.load_kube_config(config_file=kubeconfig_path, client_configuration=cfg)
    api = client.ApiClient(cfg)
    base = f"/api/v1/namespaces/{NS}/configmaps"

    async def call(method: str, path: str, body: Any = None, ctype: str = "application/json", **params: str):
        # Raw JSON in, plain dicts out (response type "object"): no generated-model round trip, as the operator
        # would use it (its objects are dicts, as kopf hands them over).
        return await api.call_api(path, method, query_params=list(params.items()), body=body,
                                  header_params={"Content-Type": ctype, "Accept": "application/json"},
                                  auth_settings=["BearerToken"], response_types_map={200: "object", 201: "object"},
                                  _return_http_data_only=True)

    return functools.partial(_by_path, call, base), api.close


async def _lightkube(kubeconfig_path: str):
    from lightkube import AsyncClient, KubeConfig
    from lightkube.generic_resource import create_namespaced_resource
    from lightkube.types import CascadeType, PatchType

    # A generic resource keeps plain dicts (lightkube's core models would parse every object into classes).
    ConfigMap = create_namespaced_resource("", "v1", "ConfigMap", "configmaps")
    api = AsyncClient(KubeConfig.from_file(kubeconfig_path))

    async def unit(i: int) -> None:
        await api.create(ConfigMap.from_dict(_body(i)), namespace=NS)
        await api.get(ConfigMap, f"cm-{i}", namespace=NS)
        await api.patch(ConfigMap, f"cm-{i}", {"data": {"phase": "Running"}}, namespace=NS,
                        patch_type=PatchType.MERGE)
        [x async for x in api.list(ConfigMap, namespace=NS, labels={"app": "bench", "idx": str(i)})]
        await api.delete(ConfigMap, f"cm-{i}", namespace=NS, cascade=CascadeType.BACKGROUND)

    return unit, api.close


async def _child(kind: str, kubeconfig_path: str, objects: int, offset: int) -> dict[str, Any]:
    import yaml

    rss0 = _rss_mb()
    t0 = time.perf_counter()
    if kind == "aiohttp":
        unit, close = await _aiohttp(yaml.safe_load(Path(kubeconfig_path).read_text()))
    elif kind == "kubernetes_asyncio":
        unit, close = await _kubernetes_asyncio(kubeconfig_path)
    else:
        unit, close = await _lightkube(kubeconfig_path)
    import_s, rss_import = time.perf_counter() - t0, _rss_mb()
    await unit(offset + objects)  # warm the connection pool
    limit = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        async with limit:
            await unit(i)

    cpu0, t1 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(offset + i) for i in range(objects)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t1
    result = close()
    if asyncio.iscoroutine(result):
        await result
    return {"client": kind, "import_s": import_s, "import_mb": rss_import - rss0, "peak_mb": _rss_mb(),
            "requests": objects * 5, "cpu_s": cpu, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--extra-site", default="", help="site-packages folder with clients not in .venv")
    parser.add_argument("--child", nargs=4, metavar=("CLIENT", "KUBECONFIG", "OBJECTS", "OFFSET"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, kubeconfig, objects, offset = args.child
        print(json.dumps(asyncio.run(_child(kind, kubeconfig, int(objects), int(offset)))))
        return

    sys.path.insert(0, str(ROOT / "tests"))
    from support.kube import emulated_api

    env = dict(os.environ)
    if args.extra_site:  # after .venv's own packages, so shared ones (aiohttp, yaml) are the locked versions
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), args.extra_site) if p)
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in CLIENTS}
    with emulated_api(namespaces=[NS]) as api, tempfile.TemporaryDirectory() as tmp:
        kubeconfig = api.write_kubeconfig(Path(tmp) / "kubeconfig", user="bench")
        offset = 0
        for r in range(args.rounds):
            for kind in CLIENTS:  # interleaved, so that a slow moment of the machine hits every client
                out = subprocess.run([sys.executable, __file__, "--child", kind, str(kubeconfig), str(args.objects),
                                      str(offset)], env=env, capture_output=True, text=True, check=False)
                offset += args.objects + 1
                if out.returncode:
                    sys.exit(f"{kind} failed:\n{out.stderr[-3000:]}")
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows[kind].append(row)
                print(f"round {r + 1} {kind:>18}: {row['requests']} requests, {row['cpu_s']:.2f} s CPU, "
                      f"{row['wall_s']:.2f} s wall, import {row['import_s']:.2f} s / +{row['import_mb']:.0f} MB, "
                      f"peak RSS {row['peak_mb']:.0f} MB", flush=True)
    base = statistics.median(x["cpu_s"] for x in rows["aiohttp"]) / args.objects / 5 * 1000
    print(f"\nmedian of {args.rounds} rounds, {args.objects * 5} requests each "
          f"(baseline: bare aiohttp, {base:.2f} ms CPU per request)")
    print("| client | CPU ms/request | ratio to aiohttp | wall s | import s | import MB | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for kind in CLIENTS:
        med = {k: statistics.median(x[k] for x in rows[kind]) for k in ("cpu_s", "wall_s", "import_s",
                                                                          "import_mb", "peak_mb")}
        per = med["cpu_s"] / args.objects / 5 * 1000
        print(f"| {kind} | {per:.2f} | {per / base:.2f} | {med['wall_s']:.2f} | {med['import_s']:.2f} | "
              f"{med['import_mb']:.0f} | {med['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
