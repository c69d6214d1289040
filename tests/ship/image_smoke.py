"""Run the operator image against the emulated API server and watch it reconcile a TransferJob.

Started by scripts/image-smoke.sh after it has built the image (`PYTHONPATH=tests python -m
ship.image_smoke --image IMAGE --docker "docker -H ..."`). The container runs on the host network, as the
image's own user, with what the chart enforces: a read-only root filesystem with a tmpfs at /tmp, no
capabilities, no privilege escalation. It passes when, within the timeout:

- the process in the container is uid 10001 with a user name (kopf calls getpass.getuser());
- /healthz answers and /metrics serves Prometheus text;
- for a new TransferJob the operator creates the ConfigMap and the RayJob, and mirrors the RayJob's
  progress (driven by the fake KubeRay controller) into the TransferJob's status up to a finished phase,
  with observedGeneration and the Reconciling condition as contract 4 says;
- every API request it made is allowed by the RBAC rules the chart grants it.

The operator runs as the chart's default install runs it (`--all-namespaces`, the ClusterRole's rules).
In namespaced mode (`--namespace`) kopf 1.45 still lists CustomResourceDefinitions and Namespaces, which
a namespaced Role cannot grant; kopf falls back on a 403, but the audit here would flag it, so that mode
is left to the chart's render tests until the operator turns kopf's cluster scanning off there.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes
from graft.operator import rbac
from support.fake_kuberay import FakeKubeRay
from support.kube import emulated_api
from support.s3 import TEST_CREDENTIALS, free_port, make_bucket, moto_server

from graft.api.crd import COMMITTED_CRD

NAMESPACE = "graft-smoke"
CONTAINER = f"graft-operator-smoke-{os.getpid()}"
IMAGE_UID = 10001


def log(message: str) -> None:
    print(f"[image-smoke] {message}", file=sys.stderr, flush=True)


def wait_for(what: str, check, timeout: float) -> Any:
    """Poll `check()` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (a fixed http://127.0.0.1 URL)
            return resp.status, resp.read().decode()
    except OSError:
        return 0, ""


def transfer_job(storage_uri: str, endpoint: str) -> dict[str, Any]:
    return {
        "apiVersion": "graft.dev/v1alpha1",
        "kind": "TransferJob",
        "metadata": {"name": "smoke", "namespace": NAMESPACE},
        "spec": {
            "model": {"backbone": "smallcnn", "numClasses": 10},
            "data": {"train": "builtin:digits-noisy", "imageSize": 8, "shotsPerClass": 5},
            "stages": [
                {"type": "Pretrain", "data": "builtin:digits-clean", "numClasses": 10, "epochs": 1},
                {"type": "FrozenFeatures"},
                {"type": "Head", "epochs": 1},
            ],
            "workers": {"replicas": 1, "cpus": "1", "memory": "1Gi"},
            "storage": {"uri": storage_uri, "endpoint": endpoint, "credentialsSecret": {"name": "smoke-s3"}},
        },
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--docker", default="docker", help="docker command, e.g. 'docker -H unix:///run/x.sock'")
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args(argv)
    docker = shlex.split(args.docker)

    def sh(*cmd: str, check: bool = True) -> str:
        return subprocess.run([*docker, *cmd], capture_output=True, text=True, check=check, timeout=60).stdout

    sh("rm", "-f", CONTAINER, check=False)
    with tempfile.TemporaryDirectory(prefix="graft-image-smoke-") as tmp, moto_server() as s3, \
            emulated_api(namespaces=[NAMESPACE], crds=[COMMITTED_CRD]) as api:
        tmpdir = Path(tmp)
        tmpdir.chmod(0o755)
        kubeconfig = api.write_kubeconfig(tmpdir / "kubeconfig", user="operator")
        kubeconfig.chmod(0o644)  # readable by the image's non-root user
        bucket = "graft-smoke"
        make_bucket(s3, bucket)
        metrics_port, liveness_port = free_port(), free_port()
        log(f"API server {api.url}, S3 {s3}; starting {args.image}")
        sh(
            "run", "--detach", "--name", CONTAINER, "--network", "host",
            "--read-only", "--tmpfs", "/tmp",  # noqa: S108 (the container's scratch mount)
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--volume", f"{kubeconfig}:/etc/graft/kubeconfig:ro", "--env", "KUBECONFIG=/etc/graft/kubeconfig",
            args.image, "--all-namespaces", f"--metrics-port={metrics_port}",
            f"--liveness-port={liveness_port}",
        )
        try:
            with FakeKubeRay(api, NAMESPACE, tmpdir / "kuberay", training=False, run_seconds=3.0):
                _check(api, sh, s3, bucket, metrics_port, liveness_port, args.timeout)
        except BaseException:
            logs = subprocess.run([*docker, "logs", "--tail", "60", CONTAINER], capture_output=True, text=True,
                                  check=False)
            log("operator container logs:\n" + logs.stdout + logs.stderr)
            raise
        finally:
            sh("rm", "-f", CONTAINER, check=False)
    log("PASS")
    return 0


def _check(api, sh, s3: str, bucket: str, metrics_port: int, liveness_port: int, timeout: float) -> None:
    def running() -> bool:
        return sh("inspect", "--format", "{{.State.Running}}", CONTAINER, check=False).strip() == "true"

    # Who the operator runs as: the image's USER, never root, with a passwd entry.
    wait_for("the container to run", running, 30)
    uid = sh("exec", CONTAINER, "id", "-u").strip()
    user = sh("exec", CONTAINER, "id", "-un").strip()
    pid1 = sh("exec", CONTAINER, "cat", "/proc/1/status")
    pid1_uid = next(line.split()[1] for line in pid1.splitlines() if line.startswith("Uid:"))
    assert uid == pid1_uid == str(IMAGE_UID), f"operator runs as uid {pid1_uid}, expected {IMAGE_UID}"
    assert user == "graft", f"uid {uid} has no passwd entry named graft: {user!r}"
    log(f"operator process runs as uid {pid1_uid} ({user})")

    wait_for("/healthz", lambda: http_get(f"http://127.0.0.1:{liveness_port}/healthz")[0] == 200 or
             (not running() and sys.exit("operator container exited")), 60)
    log("/healthz answers 200")

    with api.client() as client:
        core = kubernetes.client.CoreV1Api(client)
        custom = kubernetes.client.CustomObjectsApi(client)
        core.create_namespaced_secret(NAMESPACE, {
            "metadata": {"name": "smoke-s3"},
            "stringData": {k: TEST_CREDENTIALS[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
        })
        job = transfer_job(f"s3://{bucket}/jobs", s3)
        custom.create_namespaced_custom_object("graft.dev", "v1alpha1", NAMESPACE, "transferjobs", job)
        log("TransferJob created")

        def tj() -> dict[str, Any]:
            return custom.get_namespaced_custom_object("graft.dev", "v1alpha1", NAMESPACE, "transferjobs", "smoke")

        rayjobs = wait_for("the operator to create a RayJob", lambda: api.objects("ray.io", "rayjobs", NAMESPACE),
                           timeout)
        (rayjob,) = rayjobs
        owner = rayjob["metadata"]["ownerReferences"][0]
        assert owner["kind"] == "TransferJob" and owner["uid"] == tj()["metadata"]["uid"], owner
        configmaps = [c for c in api.objects("", "configmaps", NAMESPACE) if "transferjob.json" in c.get("data", {})]
        assert configmaps, "no ConfigMap carrying transferjob.json"
        log(f"RayJob {rayjob['metadata']['name']} and ConfigMap {configmaps[0]['metadata']['name']} created")

        seen: list[str] = []

        def phase(want: set[str]) -> str | None:
            status = tj().get("status") or {}
            if status.get("phase") and (not seen or seen[-1] != status["phase"]):
                seen.append(status["phase"])
            return status.get("phase") if status.get("phase") in want else None

        wait_for("phase Running", lambda: phase({"Running", "Succeeded", "Failed"}), timeout)
        final = wait_for("a finished phase", lambda: phase({"Succeeded", "Failed"}), timeout)
        log(f"phases seen: {' -> '.join(seen)}")
        status = tj()["status"]
        assert "Running" in seen, seen
        assert status["observedGeneration"] == tj()["metadata"]["generation"], status
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions.get("Reconciling", {}).get("status") != "True", conditions
        log(f"final phase {final}: {status.get('reason')}: {status.get('message')}")

    status_code, metrics = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
    assert status_code == 200 and "# TYPE" in metrics, f"/metrics answered {status_code}"
    graft_metrics = sorted({line.split()[2] for line in metrics.splitlines()
                            if line.startswith("# TYPE") and "graft" in line})
    log(f"/metrics serves {len(graft_metrics)} graft metric families: {', '.join(graft_metrics[:6])}")

    denied = [r for r in api.requests_by("operator")
              if not rbac.allows(r.verb, r.group, r.rbac_resource, namespaced=False)]
    assert not denied, "requests outside the chart's ClusterRole: " + ", ".join(
        f"{r.verb} {r.group}/{r.rbac_resource}" for r in denied[:10])
    log(f"{len(api.requests_by('operator'))} API requests, all within the chart's ClusterRole")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
