"""The fake KubeRay runs RayJob entrypoints like a head pod would and reports status like KubeRay v1.3+."""

from __future__ import annotations

import base64
import json
import textwrap
import time

import kubernetes
import pytest
from support.fake_kuberay import FakeKubeRay

NS = "graft-test"
G, V = "ray.io", "v1"

# The "trainer" of these tests: proves it got the job file from the mounted ConfigMap and the keys from the
# Secret, and behaves as the ConfigMap's `behaviour` key says.
SCRIPT = textwrap.dedent(
    """
    import json, os, pathlib, sys, time
    job = json.loads(pathlib.Path(sys.argv[1]).read_text())
    out = pathlib.Path(job["out"])
    behaviour = pathlib.Path(sys.argv[1]).with_name("behaviour").read_text()
    attempts = int(out.read_text().split()[0]) + 1 if out.exists() else 1
    out.write_text(f"{attempts} {os.environ.get('AWS_ACCESS_KEY_ID')} {os.environ.get('AWS_ENDPOINT_URL')}")
    if behaviour == "fail-once" and attempts == 1:
        sys.exit(3)
    if behaviour == "fail":
        sys.exit(4)
    if behaviour == "sleep":
        time.sleep(120)
    """
)


def wait_for(fn, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def make_rayjob(client, name: str, out, behaviour: str, *, creds_ref: str = "s3-creds", **spec) -> None:
    core = kubernetes.client.CoreV1Api(client)
    co = kubernetes.client.CustomObjectsApi(client)
    core.create_namespaced_config_map(NS, {"metadata": {"name": name}, "data": {
        "transferjob.json": json.dumps({"out": str(out)}), "run.py": SCRIPT, "behaviour": behaviour}})
    env = [{"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": creds_ref, "key": "accessKeyId"}}},
           {"name": "AWS_ENDPOINT_URL", "value": "http://127.0.0.1:9"}]
    head = {"containers": [{"name": "ray-head", "image": "graft", "env": env,
                            "volumeMounts": [{"name": "graft-job", "mountPath": "/etc/graft/job"}]}],
            "volumes": [{"name": "graft-job", "configMap": {"name": name}}]}
    co.create_namespaced_custom_object(G, V, NS, "rayjobs", {
        "apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": name},
        "spec": {"entrypoint": "python /etc/graft/job/run.py /etc/graft/job/transferjob.json",
                 "submissionMode": "K8sJobMode", "shutdownAfterJobFinishes": True,
                 "rayClusterSpec": {"headGroupSpec": {"template": {"spec": head}}}, **spec}})


def status(client, name):
    obj = kubernetes.client.CustomObjectsApi(client).get_namespaced_custom_object(G, V, NS, "rayjobs", name)
    return obj.get("status") or {}


@pytest.fixture()
def client(kube_api):
    with kube_api.client() as c:
        core = kubernetes.client.CoreV1Api(c)
        core.create_namespaced_secret(NS, {"metadata": {"name": "s3-creds"},
                                           "data": {"accessKeyId": base64.b64encode(b"AKIDFROMSECRET").decode()}})
        yield c


def test_runs_the_entrypoint_with_the_mounted_job_and_secret_env(client, fake_kuberay, tmp_path, kube_api):
    out = tmp_path / "out"
    make_rayjob(client, "ok", out, "succeed")
    st = wait_for(lambda: status(client, "ok").get("jobDeploymentStatus") == "Complete" and status(client, "ok"),
                  what="Complete")
    assert out.read_text() == "1 AKIDFROMSECRET http://127.0.0.1:9"
    assert st["jobStatus"] == "SUCCEEDED" and st["succeeded"] == 1 and st["failed"] == 0
    assert st["startTime"] and st["endTime"] and st["jobId"] and st["dashboardURL"].endswith(":8265")
    # shutdownAfterJobFinishes: the cluster and its pods go once the job finished (KubeRay deletes the
    # cluster after writing the final status, so a busy machine may see Complete first).
    assert st["rayClusterName"]
    wait_for(lambda: not kube_api.objects("ray.io", "rayclusters", NS), what="the RayCluster deleted")
    wait_for(lambda: not kube_api.objects("", "pods", NS), what="the pods deleted")


def test_with_a_ttl_the_cluster_outlives_the_finish_by_the_ttl_and_the_rayjob_stays(client, fake_kuberay, tmp_path,
                                                                                     kube_api):
    """KubeRay's rayjob_controller.go: with shutdownAfterJobFinishes the finished RayJob is requeued until
    endTime + ttlSecondsAfterFinished, then its cluster is deleted; the RayJob itself stays. The e2e TTL test relies
    on this: a fake that deleted the cluster at the finish would fail here (and there)."""
    make_rayjob(client, "kept", tmp_path / "kept", "succeed", ttlSecondsAfterFinished=4)
    wait_for(lambda: status(client, "kept").get("jobDeploymentStatus") == "Complete", what="Complete")
    finished = time.monotonic()
    time.sleep(1)
    assert kube_api.objects("ray.io", "rayclusters", NS), "the cluster was deleted before its TTL passed"
    wait_for(lambda: not kube_api.objects("ray.io", "rayclusters", NS), timeout=15, what="the RayCluster deleted")
    assert time.monotonic() - finished >= 3, "deleted before endTime + TTL"
    assert status(client, "kept")["jobDeploymentStatus"] == "Complete", "the RayJob went with its cluster"


def test_failed_attempt_is_retried_up_to_the_backoff_limit(client, fake_kuberay, tmp_path):
    make_rayjob(client, "flaky", tmp_path / "flaky", "fail-once", backoffLimit=1)
    make_rayjob(client, "broken", tmp_path / "broken", "fail", backoffLimit=1)
    st = wait_for(lambda: status(client, "flaky").get("jobDeploymentStatus") == "Complete" and status(client, "flaky"),
                  what="flaky Complete")
    assert st["failed"] == 1 and st["jobStatus"] == "SUCCEEDED"
    assert (tmp_path / "flaky").read_text().startswith("2 ")
    st = wait_for(lambda: status(client, "broken").get("jobDeploymentStatus") == "Failed" and status(client, "broken"),
                  what="broken Failed")
    assert st["failed"] == 2 and st["reason"] == "AppFailed" and "exit code 4" in st["message"]


def test_suspend_kills_the_run_and_resume_starts_it_again(client, fake_kuberay, tmp_path):
    co = kubernetes.client.CustomObjectsApi(client)
    make_rayjob(client, "sleepy", tmp_path / "sleepy", "sleep")
    wait_for(lambda: status(client, "sleepy").get("jobStatus") == "RUNNING", what="RUNNING")
    run = next(r for r in fake_kuberay.runs.values() if r.name == "sleepy")
    proc = wait_for(lambda: run.proc, what="process")
    co.patch_namespaced_custom_object(G, V, NS, "rayjobs", "sleepy", {"spec": {"suspend": True}})
    st = wait_for(lambda: status(client, "sleepy").get("jobDeploymentStatus") == "Suspended" and status(
        client, "sleepy"), what="Suspended")
    assert proc.poll() is not None and not st.get("rayClusterName")
    co.patch_namespaced_custom_object(G, V, NS, "rayjobs", "sleepy", {"spec": {"suspend": False}})
    wait_for(lambda: status(client, "sleepy").get("jobStatus") == "RUNNING", what="RUNNING again")
    wait_for(lambda: (tmp_path / "sleepy").exists() and (tmp_path / "sleepy").read_text().startswith("2 "),
             what="second attempt")


def test_active_deadline_fails_the_job(client, fake_kuberay, tmp_path):
    make_rayjob(client, "slow", tmp_path / "slow", "sleep", activeDeadlineSeconds=2)
    st = wait_for(lambda: status(client, "slow").get("jobDeploymentStatus") == "Failed" and status(client, "slow"),
                  what="Failed")
    assert st["reason"] == "DeadlineExceeded" and "activeDeadlineSeconds" in st["message"]


def test_created_suspended_stays_suspended(client, fake_kuberay, tmp_path):
    make_rayjob(client, "queued", tmp_path / "queued", "succeed", suspend=True)
    wait_for(lambda: status(client, "queued").get("jobDeploymentStatus") == "Suspended", what="Suspended")
    time.sleep(0.5)
    assert not (tmp_path / "queued").exists()


def head_pod(client, rayjob: str):
    cluster = status(client, rayjob).get("rayClusterName")
    pods = kubernetes.client.CoreV1Api(client).list_namespaced_pod(
        NS, label_selector=f"ray.io/cluster={cluster},ray.io/node-type=head").items if cluster else []
    return pods[0] if pods else None


def test_a_missing_secret_keeps_the_job_initializing_and_the_pod_says_why(client, fake_kuberay, tmp_path):
    make_rayjob(client, "nosecret", tmp_path / "nosecret", "succeed", creds_ref="absent")

    def waiting():
        pod = head_pod(client, "nosecret")
        statuses = (pod.status.container_statuses or []) if pod and pod.status else []
        return statuses and statuses[0].state.waiting

    w = wait_for(waiting, what="a waiting head container")
    assert w.reason == "CreateContainerConfigError" and 'secret "absent" not found' in w.message
    assert status(client, "nosecret")["jobDeploymentStatus"] == "Initializing"
    assert not (tmp_path / "nosecret").exists()


def test_gpus_the_node_lacks_leave_the_pods_unschedulable(client, fake_kuberay, tmp_path):
    make_rayjob(client, "gpu", tmp_path / "gpu", "succeed")
    co = kubernetes.client.CustomObjectsApi(client)
    co.delete_namespaced_custom_object(G, V, NS, "rayjobs", "gpu")
    rj = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "gpu2"}, "spec": {
        "entrypoint": "python -c pass", "rayClusterSpec": {
            "headGroupSpec": {"template": {"spec": {"containers": [{"name": "ray-head"}]}}},
            "workerGroupSpecs": [{"groupName": "workers", "replicas": 2, "template": {"spec": {"containers": [
                {"name": "ray-worker", "resources": {"limits": {"nvidia.com/gpu": 1}}}]}}}]}}}
    co.create_namespaced_custom_object(G, V, NS, "rayjobs", rj)

    def pods():
        cluster = status(client, "gpu2").get("rayClusterName")
        items = kubernetes.client.CoreV1Api(client).list_namespaced_pod(
            NS, label_selector=f"ray.io/cluster={cluster}").items if cluster else []
        return items if items and all(p.status and p.status.conditions for p in items) else None

    by_type: dict[str, list] = {}
    for pod in wait_for(pods, what="pods with status"):
        scheduled = next(c for c in pod.status.conditions if c.type == "PodScheduled")
        by_type.setdefault(pod.metadata.labels["ray.io/node-type"], []).append((scheduled.status, scheduled.reason))
    assert by_type == {"head": [("True", None)], "worker": [("False", "Unschedulable")] * 2}
    worker = next(p for p in pods() if p.metadata.labels["ray.io/node-type"] == "worker")
    scheduled = next(c for c in worker.status.conditions if c.type == "PodScheduled")
    assert "Insufficient nvidia.com/gpu" in scheduled.message
    assert status(client, "gpu2")["jobDeploymentStatus"] == "Initializing"


def test_no_training_mode_marks_jobs_running_then_succeeded(kube_api, tmp_path):
    with kube_api.client() as c, FakeKubeRay(kube_api, NS, tmp_path, training=False, run_seconds=0.3) as fake:
        kubernetes.client.CustomObjectsApi(c).create_namespaced_custom_object(G, V, NS, "rayjobs", {
            "apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "bench"},
            # A RayJob needs a rayClusterSpec (or a clusterSelector) for KubeRay to run it, and the RayCluster it
            # creates from it needs a headGroupSpec (KubeRay's CRD requires it).
            "spec": {"entrypoint": "python -m graft_trainer --job /etc/graft/job/transferjob.json",
                     "rayClusterSpec": {"headGroupSpec": {"rayStartParams": {}, "template": {"spec": {
                         "containers": [{"name": "ray-head", "image": "graft"}]}}}}}})
        wait_for(lambda: status(c, "bench").get("jobStatus") == "RUNNING", what="RUNNING")
        st = wait_for(lambda: status(c, "bench").get("jobDeploymentStatus") == "Complete" and status(c, "bench"),
                      what="Complete")
        assert st["jobStatus"] == "SUCCEEDED" and not fake.errors
