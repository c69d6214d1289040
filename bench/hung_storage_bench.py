"""Hung storage benchmark (issue 10): how long RayJob transitions take to reach TransferJobs next to jobs whose S3
endpoint accepts connections and never answers.

Runs the emulated API server (in this process), the real `graft operator` and the fake KubeRay in no-training mode
(each its own process, as in operator_bench.py), and a hung endpoint on 127.0.0.1 (tests/support/s3.py). Phases,
each with healthy `file://` jobs created one at a time: no hung job (the baseline), then right after creating 1 hung
job, then right after creating 7 more (while their first ledger reads hang).
Measured from the API server's change feed:
  * healthy RayJob Running -> its TransferJob's status showing Running, per phase, as ratios against the baseline;
  * TransferJob created -> Created=True, healthy (baseline) and hung;
  * a hung job's own RayJob Running -> TransferJob Running, LedgerReadable=False after creation, and its RayJob
    Complete -> TransferJob Succeeded.

    .venv/bin/python bench/hung_storage_bench.py [--per-phase 10] [--run-seconds 30] [--wait 60] [--skip-finish]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import kubernetes  # noqa: E402
from support.change_feed import ChangeFeed  # noqa: E402
from support.committed import COMMITTED_CRD  # noqa: E402
from support.kube import emulated_api  # noqa: E402
from support.operator_proc import OperatorProcess  # noqa: E402
from support.s3 import TEST_CREDENTIALS, hung_endpoint  # noqa: E402

NS = "bench-hung"
G, V, P = "graft.dev", "v1alpha1", "transferjobs"


def transferjob(name: str, storage: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}", "kind": "TransferJob", "metadata": {"name": name},
        "spec": {
            "model": {"backbone": "smallcnn", "numClasses": 10, "weights": f"{storage['uri']}/weights.pt"},
            "data": {"train": "builtin:digits", "imageSize": 8},
            "stages": [{"type": "FrozenFeatures"}, {"type": "Head", "epochs": 1}],
            "storage": storage,
        },
    }


def fmt(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    missing = len(values) - len(got)
    if not got:
        return f"n={len(values)}, none seen"
    text = f"n={len(got)} p50={statistics.median(got) * 1000:.0f} ms max={max(got) * 1000:.0f} ms"
    return text + (f" ({missing} not seen within the wait)" if missing else "")


def ratio(values: list[float | None], base: list[float | None]) -> str:
    got, ref = [v for v in values if v is not None], [v for v in base if v is not None]
    if not got or not ref:
        return "n/a"
    return f"p50 x{statistics.median(got) / statistics.median(ref):.1f}, max x{max(got) / max(ref):.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-phase", type=int, default=10, help="healthy jobs measured per phase")
    parser.add_argument("--run-seconds", type=float, default=30, help="how long a fake RayJob 'runs'")
    parser.add_argument("--wait", type=float, default=60, help="the longest wait for any one fact")
    parser.add_argument("--skip-finish", action="store_true", help="do not wait for a hung job to finish")
    args = parser.parse_args()

    feed = ChangeFeed(NS)
    with tempfile.TemporaryDirectory(prefix="graft-bench-hung-") as tmp, hung_endpoint() as hung, \
            emulated_api(namespaces=[NS]) as api:
        api.store.listeners.append(feed)
        api.apply_crd(COMMITTED_CRD)
        healthy_storage = {"uri": f"file://{tmp}/storage"}
        hung_storage = {"uri": "s3://graft-hung/jobs", "endpoint": hung.url, "region": "us-east-1",
                        "credentialsSecret": {"name": "s3-credentials", "accessKeyIdKey": "access-key",
                                              "secretAccessKeyKey": "secret-key"}}
        op = OperatorProcess(api, NS, Path(tmp) / "operator", metrics=False).start()
        kuberay = subprocess.Popen([sys.executable, str(ROOT / "tests" / "support" / "fake_kuberay.py"),
                                    "--url", api.url, "--namespace", NS, "--workdir", f"{tmp}/kuberay",
                                    "--no-training", "--run-seconds", str(args.run_seconds), "--no-pods"])
        try:
            with api.client("bench") as client:
                kubernetes.client.CoreV1Api(client).create_namespaced_secret(NS, {
                    "metadata": {"name": "s3-credentials"},
                    "stringData": {"access-key": TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                   "secret-key": TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}})
                co = kubernetes.client.CustomObjectsApi(client)

                def healthy_phase(label: str) -> list[float | None]:
                    out = []
                    for i in range(args.per_phase):
                        name = f"{label}-{i}"
                        co.create_namespaced_custom_object(G, V, NS, P, transferjob(name, healthy_storage))
                        feed.wait(name, "Running True", timeout=args.wait)
                        out.append(feed.between(name, "rayjob Running", "Running True"))
                    return out

                def add_hung(first: int, last: int) -> None:
                    # Measured at once, while the new jobs' first ledger reads hang.
                    for i in range(first, last):
                        co.create_namespaced_custom_object(G, V, NS, P, transferjob(f"hung-{i}", hung_storage))

                t0 = time.monotonic()
                base = healthy_phase("base")
                add_hung(0, 1)
                one = healthy_phase("one")
                add_hung(1, 8)
                eight = healthy_phase("eight")
                phases_s = time.monotonic() - t0
                hung_names = [f"hung-{i}" for i in range(8)]
                for n in hung_names:
                    feed.wait(n, "Created True", timeout=args.wait)
                until = time.monotonic() + args.wait
                readable = [feed.wait(n, "LedgerReadable False", timeout=until - time.monotonic()) for n in hung_names]
                finished = None if args.skip_finish else feed.wait("hung-0", "Succeeded True",
                                                                    timeout=args.run_seconds + args.wait)
        finally:
            kuberay.terminate()
            kuberay.wait(30)
            op.stop()

    created_base = [feed.between(f"base-{i}", "added", "Created True") for i in range(args.per_phase)]
    created_hung = [feed.between(n, "added", "Created True") for n in hung_names]
    print(f"hung storage benchmark: {args.per_phase} healthy file:// jobs per phase, one at a time; hung endpoint "
          f"accepts and never answers; phases took {phases_s:.1f} s; the hung endpoint accepted {hung.accepted} "
          "connections")
    print(f"healthy RayJob Running -> TransferJob Running, 0 hung jobs (baseline): {fmt(base)}")
    print(f"healthy RayJob Running -> TransferJob Running, 1 hung job:            {fmt(one)}; ratio {ratio(one, base)}")
    print(f"healthy RayJob Running -> TransferJob Running, 8 hung jobs:           {fmt(eight)}; "
          f"ratio {ratio(eight, base)}")
    print(f"TransferJob created -> Created=True, healthy (baseline): {fmt(created_base)}")
    print(f"TransferJob created -> Created=True, 1 hung job alone:   {fmt(created_hung[:1])}; "
          f"ratio {ratio(created_hung[:1], created_base)}")
    print(f"TransferJob created -> Created=True, 7 hung back to back: {fmt(created_hung[1:])}; "
          f"ratio {ratio(created_hung[1:], created_base)}")
    print("hung jobs' own RayJob Running -> TransferJob Running: "
          f"{fmt([feed.between(n, 'rayjob Running', 'Running True') for n in hung_names])}")
    said = [feed.between(n, "added", "LedgerReadable False") if r else None
            for n, r in zip(hung_names, readable, strict=True)]
    print(f"hung jobs created -> LedgerReadable=False: {fmt(said)}")
    if args.skip_finish:
        pass
    elif finished:
        print(f"hung-0 RayJob Complete -> TransferJob Succeeded: "
              f"{fmt([feed.between('hung-0', 'rayjob Complete', 'Succeeded True')])}")
    else:
        print("hung-0 RayJob Complete -> TransferJob Succeeded: not seen within the wait")
    return 0


if __name__ == "__main__":
    sys.exit(main())
