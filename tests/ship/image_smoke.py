"""Run the operator image against the emulated API server and watch it reconcile a TransferJob.

Started by scripts/image-smoke.sh after it has built the image (`PYTHONPATH=tests python -m
ship.image_smoke --image IMAGE --docker "docker -H ..."`). The container runs on the host network, as the
image's own user, with what the chart enforces: a read-only root filesystem with a tmpfs at /tmp, no
capabilities, no privilege escalation. It passes when, within the timeout:

- the process in the container is uid 10001 with a user name (kopf calls getpass.getuser());
- /healthz answers and /metrics serves Prometheus text;
- for a new TransferJob the operator creates the RayJob (the job in its head's GRAFT_JOB), and mirrors the RayJob's
  progress (driven by the fake KubeRay controller) into the TransferJob's status up to a finished phase,
  with observedGeneration and the Reconciling condition (kstatus reads both);
- every API request it made is allowed by the RBAC rules the chart grants it.

It runs twice, each time with the container settings the chart renders (`helm template`: the args, env,
runAsUser/runAsGroup/fsGroup, read-only root with /tmp as scratch, capabilities, no privilege escalation):
with default values (`--all-namespaces`, audited against the ClusterRole's rules), then with
`watchNamespaces: [graft-smoke]` (`--namespace=graft-smoke`, audited against the namespaced Role's rules:
nothing cluster-scoped).
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
from support.committed import COMMITTED_CRD
from support.fake_kuberay import FakeKubeRay
from support.kube import emulated_api
from support.rbac_rules import allows
from support.s3 import TEST_CREDENTIALS, free_port, make_bucket, moto_server

from ship.chart import one, render

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


def transfer_job(name: str, storage_uri: str, endpoint: str) -> dict[str, Any]:
    return {
        "apiVersion": "graft.dev/v1alpha1",
        "kind": "TransferJob",
        "metadata": {"name": name, "namespace": NAMESPACE},
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
            "checks": {"learning": {"action": "Warn"}},  # one epoch each: it learns next to nothing
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

    with tempfile.TemporaryDirectory(prefix="graft-image-smoke-") as tmp, moto_server() as s3, \
            emulated_api(namespaces=[NAMESPACE], crds=[COMMITTED_CRD]) as api:
        tmpdir = Path(tmp)
        tmpdir.chmod(0o755)
        bucket = "graft-smoke"
        make_bucket(s3, bucket)
        log(f"API server {api.url}, S3 {s3}")
        with FakeKubeRay(api, NAMESPACE, tmpdir / "kuberay", training=False, run_seconds=3.0):
            for mode, job in (("cluster", "smoke-cluster"), ("namespaced", "smoke-namespaced")):
                _run(api, docker, sh, tmpdir, mode, job, s3, bucket, args)
    log("PASS")
    return 0


def chart_container(values: dict[str, Any], tmpdir: Path) -> tuple[list[str], list[str]]:
    """`docker run` flags doing what the kubelet does with the chart's rendered operator pod, and its args."""
    pod = one(render(values, tmpdir), "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    psc, sc = pod.get("securityContext", {}), container.get("securityContext", {})
    flags = ["--user", f"{psc['runAsUser']}:{psc['runAsGroup']}", "--group-add", str(psc["fsGroup"])]
    if sc.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    for drop in sc.get("capabilities", {}).get("drop", []):
        flags += ["--cap-drop", drop]
    if sc.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    for mount in container.get("volumeMounts", []):
        assert mount["name"] in empty_dirs, f"unexpected volume {mount['name']}"
        flags += ["--tmpfs", mount["mountPath"]]
    for env in container.get("env", []):
        assert "value" in env, f"env {env['name']} is not a plain value"
        flags += ["--env", f"{env['name']}={env['value']}"]
    return flags, container["args"]


def _run(api, docker, sh, tmpdir: Path, mode: str, job: str, s3: str, bucket: str, args) -> None:
    """Run the image in one mode (`cluster` or `namespaced`) and check it reconciles TransferJob `job`."""
    user = f"operator-{mode}"  # the kubeconfig's token: the API server's log tells the two runs apart
    kubeconfig = api.write_kubeconfig(tmpdir / f"kubeconfig-{mode}", user=user)
    kubeconfig.chmod(0o644)  # readable by the image's non-root user
    metrics_port, liveness_port = free_port(), free_port()
    values: dict[str, Any] = {"metrics": {"port": metrics_port}, "livenessProbe": {"port": liveness_port}}
    if mode == "namespaced":
        values["watchNamespaces"] = [NAMESPACE]
    flags, container_args = chart_container(values, tmpdir)
    log(f"{mode}: starting {args.image} {' '.join(container_args)} ({' '.join(flags)})")
    sh(
        "run", "--detach", "--name", CONTAINER, "--network", "host", *flags,
        "--volume", f"{kubeconfig}:/etc/graft/kubeconfig:ro", "--env", "KUBECONFIG=/etc/graft/kubeconfig",
        args.image, *container_args,
    )
    try:
        _check(api, sh, job, s3, bucket, metrics_port, liveness_port, args.timeout)
        denied = [r for r in api.requests_by(user)
                  if not allows(r.verb, r.group, r.rbac_resource, namespaced=mode == "namespaced")]
        assert not denied, f"{mode}: requests outside the chart's {mode} RBAC rules: " + ", ".join(
            f"{r.verb} {r.group}/{r.rbac_resource}" for r in denied[:10])
        log(f"{mode}: {len(api.requests_by(user))} API requests, all within the chart's "
            f"{'ClusterRole' if mode == 'cluster' else 'namespaced Role'}")
    except BaseException:
        logs = subprocess.run([*docker, "logs", "--tail", "60", CONTAINER], capture_output=True, text=True,
                              check=False)
        log("operator container logs:\n" + logs.stdout + logs.stderr)
        raise
    finally:
        sh("rm", "-f", CONTAINER, check=False)


def _check(api, sh, job_name: str, s3: str, bucket: str, metrics_port: int, liveness_port: int,
           timeout: float) -> None:
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
        if not [x for x in api.objects("", "secrets", NAMESPACE) if x["metadata"]["name"] == "smoke-s3"]:
            core.create_namespaced_secret(NAMESPACE, {
                "metadata": {"name": "smoke-s3"},
                "stringData": {k: TEST_CREDENTIALS[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
            })
        job = transfer_job(job_name, f"s3://{bucket}/jobs", s3)
        custom.create_namespaced_custom_object("graft.dev", "v1alpha1", NAMESPACE, "transferjobs", job)
        log("TransferJob created")

        def tj() -> dict[str, Any]:
            return custom.get_namespaced_custom_object("graft.dev", "v1alpha1", NAMESPACE, "transferjobs", job_name)

        def owned_rayjobs() -> list[dict[str, Any]]:
            uid = tj()["metadata"]["uid"]
            return [r for r in api.objects("ray.io", "rayjobs", NAMESPACE)
                    if any(o["uid"] == uid and o["kind"] == "TransferJob"
                           for o in r["metadata"].get("ownerReferences", []))]

        (rayjob,) = wait_for("the operator to create a RayJob", owned_rayjobs, timeout)
        name = rayjob["metadata"]["name"]
        head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert any(v["name"] == "GRAFT_JOB" for v in head.get("env", [])), "the RayJob's head carries no GRAFT_JOB"
        log(f"RayJob {name} created")

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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
