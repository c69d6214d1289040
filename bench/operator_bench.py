"""Operator benchmark: many TransferJobs against the emulated API server, fake KubeRay without training.

Measures, from the API server's own change feed (so client and watch delays are included as a user sees them):
  * create -> RayJob created: from a TransferJob's ADDED to its RayJob's ADDED;
  * RayJob status change -> TransferJob status change: from the RayJob reaching a jobDeploymentStatus
    (Running, Complete) to the TransferJob's status first showing it;
  * the operator process's peak RSS (VmHWM).
A baseline of a few jobs created one at a time (no load) runs first in the same process; the burst's figures
are printed as ratios against it. Goals (issue 4): p99 < 2 s for both latencies, peak RSS < 250 MB.

Two profiles: a burst (`--jobs N` created back to back; issue 16 asks about 1,000) and a steady state
(`--rate R --duration S`: R jobs a second for S seconds). Storage is a moto S3 server with the keys in a Secret,
as on a cluster (`--storage local` for a local path, which adds a StorageNotShared Event per job).

    .venv/bin/python bench/operator_bench.py [--jobs 200 | --rate 5 --duration 60] [--baseline 5] [--run-seconds 1]
        [--pods] [--storage s3|local] [--operator-python PY]

The image's operator environment, for `--operator-python` (graft itself installed without its dependencies):
    python3 -m venv /tmp/opv && /tmp/opv/bin/pip install -r docker/requirements-operator.txt
    /tmp/opv/bin/pip install -c requirements-dev.txt setuptools
    /tmp/opv/bin/pip install --no-deps --no-build-isolation .
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import kubernetes  # noqa: E402
from support.committed import COMMITTED_CRD  # noqa: E402
from support.kube import emulated_api  # noqa: E402
from support.operator_proc import OperatorProcess  # noqa: E402
from support.s3 import TEST_CREDENTIALS, make_bucket, moto_server  # noqa: E402

NS = "bench"
G, V, P = "graft.dev", "v1alpha1", "transferjobs"
LABEL = "graft.dev/transferjob"
GOAL_P99_S = 2.0
GOAL_RSS_MB = 250.0
ORDER = ("Running", "Complete")  # the RayJob states whose mirroring is timed, in the order they happen


class Recorder:
    """Server-side timestamps of the changes the benchmark measures."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tj_added: dict[str, float] = {}
        self.rj_added: dict[str, float] = {}  # by TransferJob name (the RayJob's label)
        self.rj_state: dict[tuple[str, str], float] = {}  # (TransferJob name, jobDeploymentStatus) -> first seen
        self.tj_state: dict[tuple[str, str], float] = {}
        self.succeeded: set[str] = set()

    def __call__(self, t: float, kind: str, rt: Any, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata", {})
        if meta.get("namespace") != NS:
            return
        state = (obj.get("status") or {}).get("jobDeploymentStatus")
        with self.lock:
            if rt.plural == "transferjobs":
                name = meta["name"]
                if kind == "ADDED":
                    self.tj_added.setdefault(name, t)
                if state:
                    self.tj_state.setdefault((name, state), t)
                if (obj.get("status") or {}).get("phase") == "Succeeded":
                    self.succeeded.add(name)
            elif rt.plural == "rayjobs":
                name = (meta.get("labels") or {}).get(LABEL)
                if name is None:
                    return
                if kind == "ADDED":
                    self.rj_added.setdefault(name, t)
                if state:
                    self.rj_state.setdefault((name, state), t)

    def create_latencies(self, names: list[str]) -> list[float]:
        return [self.rj_added[n] - self.tj_added[n] for n in names if n in self.rj_added and n in self.tj_added]

    def status_latencies(self, names: list[str]) -> tuple[list[float], int, int]:
        """Latencies from every RayJob transition to Running / Complete until the TransferJob's status shows
        that state or a later one (a short-lived state may be overtaken before it is mirrored); returns the
        latencies, how many states were overtaken that way, and how many were never caught up at all."""
        out, overtaken, missing = [], 0, 0
        for n in names:
            for i, state in enumerate(ORDER):
                if (n, state) not in self.rj_state:
                    continue
                seen = [self.tj_state[(n, s)] for s in ORDER[i:] if (n, s) in self.tj_state]
                if not seen:
                    missing += 1
                    continue
                overtaken += (n, state) not in self.tj_state
                out.append(max(0.0, min(seen) - self.rj_state[(n, state)]))
        return out, overtaken, missing


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


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


@contextmanager
def job_storage(kind: str, tmp: str, client) -> Iterator[dict[str, Any]]:
    """The jobs' `spec.storage`: a bucket on a moto S3 server with its keys in a Secret, or a local path."""
    if kind == "local":
        yield {"uri": f"file://{tmp}/storage"}
        return
    with moto_server() as endpoint:
        make_bucket(endpoint, "graft-bench")
        keys = {k: TEST_CREDENTIALS[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        kubernetes.client.CoreV1Api(client).create_namespaced_secret(NS, {"metadata": {"name": "s3"},
                                                                          "stringData": keys})
        yield {"uri": "s3://graft-bench/jobs", "endpoint": endpoint, "region": "us-east-1",
               "credentialsSecret": {"name": "s3"}}


def wait_all(rec: Recorder, names: list[str], timeout: float) -> list[str]:
    """Wait until every named TransferJob is Succeeded; returns those that are not. Reads the server's change
    feed rather than polling the API, so that waiting adds no load to what is measured."""
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending and time.monotonic() < deadline:
        with rec.lock:
            pending -= rec.succeeded
        if pending:
            time.sleep(0.1)
    return sorted(pending)


def summary(label: str, values: list[float]) -> str:
    return (f"{label}: n={len(values)} p50={pct(values, 50) * 1000:.0f} ms p99={pct(values, 99) * 1000:.0f} ms "
            f"max={max(values) * 1000 if values else float('nan'):.0f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--baseline", type=int, default=5)
    parser.add_argument("--run-seconds", type=float, default=1.0, help="how long a fake RayJob 'runs'")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--pods", action="store_true", help="the fake KubeRay also creates head/worker Pods")
    parser.add_argument("--rate", type=float, default=None, help="steady state: jobs per second (with --duration)")
    parser.add_argument("--duration", type=float, default=60.0, help="steady state: seconds of arrivals")
    parser.add_argument("--storage", choices=("s3", "local"), default="s3")
    parser.add_argument("--operator-python", default=None,
                        help="run the operator with this interpreter: a venv made from "
                        "docker/requirements-operator.txt measures what the image runs (the dev venv also holds "
                        "`kubernetes` and numpy, which kopf and pyarrow import whenever they are installed)")
    args = parser.parse_args()
    if args.rate:
        args.jobs = round(args.rate * args.duration)

    rec = Recorder()
    with tempfile.TemporaryDirectory(prefix="graft-bench-") as tmp, emulated_api(namespaces=[NS]) as api, \
            api.client("bench") as client, job_storage(args.storage, tmp, client) as storage:
        api.store.listeners.append(rec)
        api.apply_crd(COMMITTED_CRD)
        op = OperatorProcess(api, NS, Path(tmp) / "operator", python=args.operator_python).start()
        # Its own process, so that its polling does not share the API server's interpreter lock. Pods are left
        # out unless asked for: the operator does not watch them, and on a real cluster the API server that
        # serves them does not share the operator's two cores.
        kuberay = subprocess.Popen([sys.executable, str(ROOT / "tests" / "support" / "fake_kuberay.py"),
                                    "--url", api.url, "--namespace", NS, "--workdir", f"{tmp}/kuberay",
                                    "--no-training", "--run-seconds", str(args.run_seconds),
                                    *([] if args.pods else ["--no-pods"])])
        try:
            co = kubernetes.client.CustomObjectsApi(client)
            # Baseline: one job at a time, each finished before the next.
            base = [f"base-{i}" for i in range(args.baseline)]
            for name in base:
                co.create_namespaced_custom_object(G, V, NS, P, transferjob(name, storage))
                left = wait_all(rec, [name], 60)
                if left:
                    raise SystemExit(f"baseline job {name} did not succeed:\n{op.log()[-3000:]}")
            # The burst: every job created back to back; or the steady state: one every 1/rate seconds.
            burst = [f"job-{i:04d}" for i in range(args.jobs)]
            cpu_before = cpu_seconds(op.proc.pid), time.process_time()
            t0 = time.monotonic()
            for i, name in enumerate(burst):
                if args.rate:
                    time.sleep(max(0.0, t0 + i / args.rate - time.monotonic()))
                co.create_namespaced_custom_object(G, V, NS, P, transferjob(name, storage))
            created_s = time.monotonic() - t0
            left = wait_all(rec, burst, args.timeout)
            total_s = time.monotonic() - t0
            rss_mb = op.peak_rss_bytes() / 2**20
            op_cpu, kuberay_cpu, own_cpu = cpu_seconds(op.proc.pid), cpu_seconds(kuberay.pid), time.process_time()
            measured_cpu = op_cpu - cpu_before[0], own_cpu - cpu_before[1]
            load = os.getloadavg()[0]
            op_requests = [r for r in api.requests_by("graft-operator") if r.verb != "watch"]
            event_reasons = Counter(e.get("reason") for e in api.objects("", "events", NS))
        finally:
            kuberay.terminate()
            kuberay.wait(30)
            op.stop()

    base_create, burst_create = rec.create_latencies(base), rec.create_latencies(burst)
    (base_status, _, _), (burst_status, overtaken, missing) = rec.status_latencies(base), rec.status_latencies(burst)
    profile = f"steady state, {args.rate:g} jobs/s for {args.duration:g} s" if args.rate else "burst"
    print(f"operator benchmark ({profile}, {args.storage} storage): {args.jobs} TransferJobs (created in "
          f"{created_s:.1f} s), all Succeeded in {total_s:.1f} s; {len(left)} not Succeeded")
    jobs = args.jobs + args.baseline
    kinds = Counter((r.verb, r.rbac_resource) for r in op_requests)
    print(f"operator requests per job ({len(op_requests) / jobs:.1f} in all, watches excluded): " + ", ".join(
        f"{verb} {resource} {n / jobs:.1f}" for (verb, resource), n in kinds.most_common()))
    print("events per job by reason: " + ", ".join(f"{r} {n / jobs:.1f}" for r, n in event_reasons.most_common()))
    print(summary(f"API server time per operator request ({len(op_requests)} requests, watches excluded)",
                  [r.duration for r in op_requests]))
    print(summary("baseline create->RayJob", base_create))
    print(summary("burst    create->RayJob", burst_create))
    print(summary("baseline RayJob status->TransferJob status", base_status))
    print(summary("burst    RayJob status->TransferJob status", burst_status)
          + f" (overtaken by a later state before mirrored: {overtaken}; never caught up: {missing})")
    for label, b, x in (("create->RayJob", base_create, burst_create),
                        ("status->status", base_status, burst_status)):
        print(f"ratio burst/baseline {label}: p50 x{pct(x, 50) / pct(b, 50):.1f}, p99 x{pct(x, 99) / pct(b, 99):.1f}")
    print(f"operator peak RSS: {rss_mb:.0f} MB; CPU seconds: operator {op_cpu:.1f}, emulated API server + client "
          f"{own_cpu:.1f}, fake KubeRay {kuberay_cpu:.1f}; load average at the end {load:.1f} on {os.cpu_count()} CPUs")
    # Which side is the bottleneck: each process runs Python on one core at most (the GIL), so a process that was
    # busy most of the measured time is what the others queued behind.
    busy = {"the operator": measured_cpu[0] / total_s,
            "the emulated API server (and this client)": measured_cpu[1] / total_s}
    bottleneck = max(busy, key=busy.get)
    print("share of one core while measured: " + ", ".join(f"{k} {v:.0%}" for k, v in busy.items())
          + f"; CPU per job: operator {measured_cpu[0] / max(1, args.jobs) * 1000:.0f} ms. Bottleneck: "
          + (f"{bottleneck}" if busy[bottleneck] > 0.5 else "neither process (both mostly idle: the fake KubeRay's "
             "--run-seconds and the operator's poll intervals set the pace)"))
    ok = (pct(burst_create, 99) < GOAL_P99_S and pct(burst_status, 99) < GOAL_P99_S and rss_mb < GOAL_RSS_MB
          and not left and not missing)
    print(f"goals (p99 < {GOAL_P99_S} s both, RSS < {GOAL_RSS_MB:.0f} MB, all mirrored): {'MET' if ok else 'NOT MET'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
