"""End to end: the real `graft operator` process against the emulated API server, the fake KubeRay running
the real trainer (`python -m graft_trainer`) on a local Ray cluster, and a moto S3 server. Driven only through API
calls, as a user with kubectl would.

Training is the slow part, so the scenarios that train start when the module starts, in their own threads, while
the quick tests run; each test waits for its scenario's verdict. Every RayJob's driver joins the session's one Ray
cluster (RAY_ADDRESS, as KubeRay's submitter joins the RayJob's RayCluster): a Ray start-up per attempt was most of
a scenario's time. The operator-restart scenario has its own namespace, operator and fake KubeRay, so that killing
that operator cannot delay the other scenarios.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import kubernetes
import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from support.committed import COMMITTED_CRD
from support.fake_kuberay import FakeKubeRay
from support.kube import emulated_api
from support.operator_proc import OPERATOR_USER, OperatorProcess
from support.s3 import TEST_CREDENTIALS, make_bucket
from support.trainer_data import NO_SERVING, SMOKE_CHECKS

pytestmark = pytest.mark.slow

NS, NS_RESTART = "graft-e2e", "graft-e2e-restart"
G, V, P = "graft.dev", "v1alpha1", "transferjobs"
LABEL = "graft.dev/transferjob"
TRAIN_TIMEOUT = 420  # a scenario's own limit, from its start (pytest-timeout is 600 s per test)
STATUS_LAG = 15  # the issue promises status within 10 s of a change
SCENARIOS_AT_ONCE = 3


# ------------------------------------------------------------------------------------------ harness


class Cluster:
    """Everything a scenario needs: the API, the bucket, helpers that act and wait through the API."""

    def __init__(self, api, bucket: str, endpoint: str):
        self.api, self.bucket, self.endpoint = api, bucket, endpoint
        self.client = api.client()
        self.co = kubernetes.client.CustomObjectsApi(self.client)
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.operators: dict[str, OperatorProcess] = {}
        self.kuberays: dict[str, FakeKubeRay] = {}

    def spec(self, **overrides: Any) -> dict[str, Any]:
        spec = {
            "model": {"backbone": "smallcnn", "numClasses": 10, "weights": f"{self.bucket}/weights/smallcnn.pt"},
            "data": {"train": "builtin:digits", "imageSize": 8, "shotsPerClass": 10},
            "stages": [{"type": "FrozenFeatures"}, {"type": "Head", "epochs": 3, "lr": 0.05}],
            "checks": SMOKE_CHECKS,
            "serving": NO_SERVING,  # but the happy job's: its status.model is checked
            "workers": {"replicas": 2, "cpus": "0.5", "memory": "1Gi"},
            "storage": {"uri": f"{self.bucket}/jobs", "endpoint": self.endpoint, "region": "us-east-1",
                        "credentialsSecret": {"name": "s3-credentials", "accessKeyIdKey": "access-key",
                                              "secretAccessKeyKey": "secret-key"}},
            "runPolicy": {"backoffLimit": 0},
        }
        for key, value in overrides.items():
            spec[key] = {**spec[key], **value} if isinstance(spec.get(key), dict) else value
        return spec

    def create(self, name: str, namespace: str = NS, drop: tuple[str, ...] = (), **overrides: Any) -> dict[str, Any]:
        spec = self.spec(**overrides)
        for path in drop:  # e.g. "model.weights"
            *parents, leaf = path.split(".")
            node = spec
            for p in parents:
                node = node[p]
            node.pop(leaf)
        body = {"apiVersion": f"{G}/{V}", "kind": "TransferJob", "metadata": {"name": name}, "spec": spec}
        return self.co.create_namespaced_custom_object(G, V, namespace, P, body)

    def get(self, name: str, namespace: str = NS) -> dict[str, Any]:
        return self.co.get_namespaced_custom_object(G, V, namespace, P, name)

    def status(self, name: str, namespace: str = NS) -> dict[str, Any]:
        return self.get(name, namespace).get("status") or {}

    def patch_spec(self, name: str, spec: dict[str, Any], namespace: str = NS) -> None:
        self.co.patch_namespaced_custom_object(G, V, namespace, P, name, {"spec": spec})

    def rayjobs(self, name: str, namespace: str = NS) -> list[dict[str, Any]]:
        return self.co.list_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs",
                                                     label_selector=f"{LABEL}={name}")["items"]

    def rayjob(self, name: str, namespace: str = NS) -> dict[str, Any]:
        found = self.rayjobs(name, namespace)
        assert len(found) == 1, f"expected one RayJob for {name}, found {[r['metadata']['name'] for r in found]}"
        return found[0]

    def events(self, name: str, namespace: str = NS) -> list[Any]:
        return [e for e in self.core.list_namespaced_event(namespace).items if e.involved_object.name == name]

    def wait(self, what: str, fn: Callable[[], Any], timeout: float, name: str | None = None,
             namespace: str = NS) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = fn()
            except ApiException as e:
                last = e
            if last and not isinstance(last, Exception):
                return last
            time.sleep(0.3)
        detail = ""
        if name:
            try:
                detail = f"\nstatus: {self.status(name, namespace)}"
            except ApiException as e:
                detail = f"\nstatus: {e}"
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}{detail}")

    def wait_phase(self, name: str, phase: str, timeout: float = TRAIN_TIMEOUT, namespace: str = NS) -> dict:
        def check():
            st = self.status(name, namespace)
            if st.get("phase") == phase:
                return st
            if st.get("phase") in ("Succeeded", "Failed") and phase in ("Succeeded", "Failed", "Running"):
                raise AssertionError(f"{name} ended {st.get('phase')} ({st.get('reason')}: {st.get('message')}), "
                                     f"expected {phase}")
            return None

        return self.wait(f"{name} phase {phase}", check, timeout, name, namespace)

    def wait_stage_done(self, name: str, stage: str, namespace: str = NS) -> dict:
        def check():
            for s in self.status(name, namespace).get("stages") or []:
                if s["type"] == stage and s.get("state") == "Succeeded":
                    return s
            st = self.status(name, namespace)
            if st.get("phase") in ("Succeeded", "Failed"):
                raise AssertionError(f"{name} ended {st.get('phase')} before {stage} was seen Succeeded: {st}")
            return None

        return self.wait(f"{name} stage {stage} Succeeded", check, TRAIN_TIMEOUT, name, namespace)

    def diagnostics(self) -> str:
        out = []
        for ns, op in self.operators.items():
            out.append(f"===== operator {ns} (tail)\n{op.log()[-6000:]}")
        for ns, kr in self.kuberays.items():
            out.append(f"===== fake KubeRay {ns} errors: {kr.errors[-10:]}\n{kr.all_logs(3000)}")
        return "\n".join(out)


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    found = [c for c in status.get("conditions") or [] if c["type"] == type_]
    assert found, f"no {type_} condition in {status.get('conditions')}"
    return found[0]


def _s3():
    return boto3.client("s3", endpoint_url=_s3.endpoint, region_name="us-east-1",
                        aws_access_key_id=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])


def s3_keys(uri: str) -> list[str]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    pages = _s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/")
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def s3_object(uri: str) -> bytes:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return _s3().get_object(Bucket=bucket, Key=key)["Body"].read()


# ---------------------------------------------------------------------------------------- scenarios


TTL = 10


def _clusters_of(c: Cluster, rayjob_name: str) -> list[dict[str, Any]]:
    return [rc for rc in c.api.objects("ray.io", "rayclusters", NS) if rc["metadata"]["name"].startswith(rayjob_name)]


def scenario_succeeds_then_ttl(c: Cluster) -> dict[str, Any]:
    c.create("happy", runPolicy={"ttlSecondsAfterFinished": TTL}, serving={"export": True})
    st = c.wait_phase("happy", "Succeeded")
    rayjob_name = st.get("rayJobName")
    # The Ray cluster stays up for the TTL after the finish (to exec in and look), then KubeRay deletes it and
    # the operator the RayJob; the TransferJob and its status stay.
    rayjob_ttl = c.rayjob("happy")["spec"].get("ttlSecondsAfterFinished")
    clusters_at_finish = _clusters_of(c, rayjob_name)
    c.wait("happy's RayJob deleted after the TTL", lambda: not c.rayjobs("happy"), TTL + STATUS_LAG, "happy")
    return {"status": st, "after_ttl": c.get("happy"), "rayjob_name": rayjob_name, "rayjob_ttl": rayjob_ttl,
            "clusters_at_finish": clusters_at_finish}


def scenario_suspend_resume(c: Cluster) -> dict[str, Any]:
    c.create("pause")
    features = c.wait_stage_done("pause", "FrozenFeatures")
    c.patch_spec("pause", {"runPolicy": {"suspend": True}})
    suspended = c.wait_phase("pause", "Suspended", timeout=STATUS_LAG + 10)
    rj = c.rayjob("pause")
    kr_status_suspended = c.wait("RayJob Suspended", lambda: (c.rayjob("pause").get("status") or {}).get(
        "jobDeploymentStatus") == "Suspended" and c.rayjob("pause"), STATUS_LAG, "pause")
    c.patch_spec("pause", {"runPolicy": {"suspend": False}})
    resumed = c.wait_phase("pause", "Running", timeout=STATUS_LAG + 10)
    final = c.wait_phase("pause", "Succeeded")
    return {"features": features, "suspended": suspended, "rayjob_at_suspend": rj,
            "rayjob_suspended": kr_status_suspended, "resumed": resumed, "final": final,
            "generation": c.get("pause")["metadata"]["generation"], "rayjobs": c.rayjobs("pause")}


def scenario_retry_resumes_from_ledger(c: Cluster) -> dict[str, Any]:
    c.create("flaky", runPolicy={"backoffLimit": 2})
    features = c.wait_stage_done("flaky", "FrozenFeatures")
    rj_name = c.rayjob("flaky")["metadata"]["name"]
    c.kuberays[NS].crash(rj_name)  # the attempt dies as on a lost node
    c.wait("RayJob failed once", lambda: (c.rayjob("flaky").get("status") or {}).get("failed") == 1, STATUS_LAG,
           "flaky")
    retrying = c.wait("attempts == 2 in status", lambda: (c.status("flaky").get("attempts") == 2) and c.status(
        "flaky"), STATUS_LAG, "flaky")
    final = c.wait_phase("flaky", "Succeeded")
    return {"features": features, "retrying": retrying, "final": final, "rayjob": c.rayjob("flaky"),
            "log": c.kuberays[NS].log(rj_name)}


def scenario_operator_restart(c: Cluster) -> dict[str, Any]:
    op = c.operators[NS_RESTART]
    c.create("restart", namespace=NS_RESTART)
    c.wait_phase("restart", "Running", timeout=60, namespace=NS_RESTART)
    op.kill()
    time.sleep(3)  # the job keeps running and changing while no operator watches
    op.start()
    mid = c.status("restart", NS_RESTART)
    final = c.wait_phase("restart", "Succeeded", namespace=NS_RESTART)
    # Kill again after the end: the next incarnation must neither resubmit nor regress the status.
    op.kill()
    op.start()
    time.sleep(5)
    return {"mid": mid, "final": final, "after": c.status("restart", NS_RESTART),
            "rayjobs": c.rayjobs("restart", NS_RESTART)}


def scenario_fixed_spec(c: Cluster) -> dict[str, Any]:
    # Issue 24: a spec the API server takes and Graft refuses, then fixed (a new generation) by the user.
    c.create("fixed", workers={"cpus": "0"})
    refused = c.wait_phase("fixed", "Failed", timeout=30)
    c.patch_spec("fixed", {"workers": {"cpus": "0.5"}})
    created = c.wait("fixed's status to name its RayJob", lambda: c.status("fixed").get("rayJobName") and c.status(
        "fixed"), STATUS_LAG, "fixed")
    running = c.wait_phase("fixed", "Running")
    final = c.wait_phase("fixed", "Succeeded")
    return {"refused": refused, "created": created, "running": running, "final": final,
            "generation": c.get("fixed")["metadata"]["generation"], "rayjobs": c.rayjobs("fixed")}


SCENARIOS = {
    "fixed_spec": scenario_fixed_spec,
    "succeeds_then_ttl": scenario_succeeds_then_ttl,
    "suspend_resume": scenario_suspend_resume,
    "retry": scenario_retry_resumes_from_ledger,
    "operator_restart": scenario_operator_restart,
}


@pytest.fixture(scope="module")
def cluster(s3_endpoint, ray_cluster, tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    bucket = f"graft-e2e-{uuid.uuid4().hex[:8]}"
    make_bucket(s3_endpoint, bucket)
    _s3.endpoint = s3_endpoint
    import torch

    from graft_trainer.models import build

    weights = io.BytesIO()
    torch.save(build("smallcnn", 10, 8).state_dict(), weights)
    _s3().put_object(Bucket=bucket, Key="weights/smallcnn.pt", Body=weights.getvalue())
    with emulated_api(namespaces=[NS, NS_RESTART]) as api:
        api.apply_crd(COMMITTED_CRD)  # through the API, as `kubectl apply -f` would
        c = Cluster(api, f"s3://{bucket}", s3_endpoint)
        for ns in (NS, NS_RESTART):
            c.core.create_namespaced_secret(ns, {"metadata": {"name": "s3-credentials"}, "stringData": {
                "access-key": TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                "secret-key": TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}})
            c.operators[ns] = OperatorProcess(api, ns, work / f"operator-{ns}").start()
            c.kuberays[ns] = FakeKubeRay(api, ns, work / f"kuberay-{ns}", env={
                "RAY_ADDRESS": ray_cluster.address, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
            ).start()
        # Three at a time. They join one running Ray, so no Ray start-ups compete (five local Ray start-ups at once
        # on CI's two cores missed Ray's fixed 30 s for a raylet to register, ray/_private/node.py); what each job
        # still starts (its driver, two Ray Data actors importing torch) is CPU-bound: all five at once on two cores
        # under heavy load left actors pending for minutes.
        pool = ThreadPoolExecutor(SCENARIOS_AT_ONCE, thread_name_prefix="scenario")
        c.futures: dict[str, Future] = {name: pool.submit(fn, c) for name, fn in SCENARIOS.items()}
        try:
            yield c
        finally:
            for f in c.futures.values():
                f.cancel()
            for kr in c.kuberays.values():
                kr.stop()
            for op in c.operators.values():
                op.stop()
            pool.shutdown(wait=False, cancel_futures=True)
            c.client.close()


def outcome(c: Cluster, name: str) -> dict[str, Any]:
    """The scenario's result, or its failure with the operator's and the runs' logs."""
    try:
        return c.futures[name].result(timeout=TRAIN_TIMEOUT + 60)
    except Exception as e:
        raise AssertionError(f"scenario {name} failed: {e}\n{traceback.format_exc()}\n{c.diagnostics()}") from e


# -------------------------------------------------------------------------------------------- tests


def test_invalid_spec_fails_with_a_warning_event_and_no_rayjob(cluster):
    c = cluster
    # Valid for the CRD's schema and CEL rules, refused by `graft validate`: features of a random backbone.
    c.create("invalid", drop=("model.weights",))
    st = c.wait_phase("invalid", "Failed", timeout=30)
    assert st["reason"] == "InvalidSpec" and "model.weights" in st["message"], st
    failed = condition(st, "Failed")
    assert failed["status"] == "True" and failed["reason"] == "InvalidSpec"
    assert condition(st, "Stalled")["status"] == "True"
    assert failed["observedGeneration"] == c.get("invalid")["metadata"]["generation"]
    events = c.wait("a Warning event", lambda: [e for e in c.events("invalid") if e.type == "Warning"], 15)
    assert any("model.weights" in (e.message or "") for e in events), [e.message for e in events]
    assert c.rayjobs("invalid") == []
    # No retry loop: nothing writes the object any more.
    rv = c.get("invalid")["metadata"]["resourceVersion"]
    writes = len([r for r in c.api.requests_by(OPERATOR_USER) if r.name == "invalid" and r.verb != "get"])
    time.sleep(5)
    assert c.get("invalid")["metadata"]["resourceVersion"] == rv
    assert len([r for r in c.api.requests_by(OPERATOR_USER) if r.name == "invalid" and r.verb != "get"]) == writes
    # One Warning event says it, not one from us and a second from kopf's handler machinery.
    said = [e for e in c.events("invalid") if "model.weights" in (e.message or "")]
    assert [(e.type, e.reason) for e in said] == [("Warning", "InvalidSpec")], [(e.type, e.reason, e.message)
                                                                                for e in said]


def test_a_refused_spec_once_fixed_runs_and_its_status_follows_the_rayjob_to_the_end(cluster):
    result = outcome(cluster, "fixed_spec")
    assert (result["refused"]["reason"], result["refused"]["observedGeneration"]) == ("InvalidSpec", 1)
    created, generation = result["created"], result["generation"]
    assert generation == 2 and created["observedGeneration"] == generation, created
    assert created["phase"] in ("Pending", "Running"), created
    assert (condition(created, "Created")["status"], condition(created, "Stalled")["status"]) == ("True", "False")
    assert result["rayjobs"] and [r["metadata"]["name"] for r in result["rayjobs"]] == [created["rayJobName"]]
    final = result["final"]
    assert (final["phase"], final["progress"], final["observedGeneration"]) == ("Succeeded", "2/2", generation)
    assert final["modelURI"] and condition(final, "Succeeded")["status"] == "True"


def test_deadline_exceeded_fails_the_job(cluster):
    c = cluster
    c.create("late", runPolicy={"activeDeadlineSeconds": 3})
    st = c.wait_phase("late", "Failed", timeout=60)
    assert st["reason"] == "DeadlineExceeded", st
    assert condition(st, "Failed")["reason"] == "DeadlineExceeded"
    assert condition(st, "Stalled")["status"] == "True"
    assert (c.rayjob("late")["status"]["jobDeploymentStatus"], c.rayjob("late")["status"]["reason"]) == (
        "Failed", "DeadlineExceeded")
    assert c.rayjob("late")["spec"]["activeDeadlineSeconds"] == 3


@pytest.mark.parametrize(
    ("name", "overrides", "reason", "says"),
    [
        ("gpu", {"workers": {"gpus": 1}}, "Unschedulable", "Insufficient nvidia.com/gpu"),
        ("nosecret", {"storage": {"credentialsSecret": {"name": "missing"}}}, "ContainerConfigError",
         'secret "missing" not found'),
    ],
    ids=["unschedulable-gpu", "missing-secret"],
)
def test_a_job_pending_for_a_known_reason_says_why(cluster, name, overrides, reason, says):
    c = cluster
    c.create(name, **overrides)
    st = c.wait(f"{name} pending with reason {reason}", lambda: c.status(name).get("reason") == reason and c.status(
        name), STATUS_LAG + 10, name)
    assert st["phase"] == "Pending" and says in st["message"], st
    assert c.rayjob(name)["status"]["jobDeploymentStatus"] == "Initializing"


def test_changing_an_immutable_field_after_start_is_refused_with_a_clear_message(cluster):
    c = cluster
    c.wait("the gpu job's RayJob", lambda: c.rayjobs("gpu"), STATUS_LAG, "gpu")  # started (see the test above)
    rayjob_spec = c.rayjob("gpu")["spec"]  # the job itself included, in the head's GRAFT_JOB
    c.patch_spec("gpu", {"model": {"numClasses": 5}})
    events = c.wait("an ImmutableFieldChanged event", lambda: [
        e for e in c.events("gpu") if e.reason == "ImmutableFieldChanged"], STATUS_LAG, "gpu")
    assert events[0].type == "Warning" and "spec.model.numClasses" in events[0].message
    time.sleep(2)
    said = [e for e in c.events("gpu") if "numClasses" in (e.message or "")]
    assert [(e.type, e.reason) for e in said] == [("Warning", "ImmutableFieldChanged")], [
        (e.type, e.reason, e.message) for e in said]
    assert c.rayjob("gpu")["spec"] == rayjob_spec


def test_small_job_succeeds_with_metrics_checkpoints_and_model_in_status(cluster):
    c = cluster
    result = outcome(c, "succeeds_then_ttl")
    st = result["status"]
    assert st["progress"] == "2/2" and st["attempts"] == 1
    assert [(s["type"], s["state"]) for s in st["stages"]] == [("FrozenFeatures", "Succeeded"),
                                                                ("Head", "Succeeded")]
    head = st["stages"][1]
    assert head["epoch"] == head["epochs"] == 3
    assert {"val_accuracy", "val_loss"} <= set(head["metrics"]), head
    assert 0.0 <= head["metrics"]["val_accuracy"] <= 1.0
    assert head["checkpoint"].startswith(f"{c.bucket}/jobs/") and s3_keys(head["checkpoint"])
    assert st["modelURI"].startswith(f"{c.bucket}/jobs/") and s3_keys(st["modelURI"])
    # The serving hand-off (issue 26): the InferenceService to apply, serving the Triton repository beside the model.
    model = st["model"]
    assert model["uri"] == st["modelURI"] and model["tritonRepository"].startswith(st["modelURI"]), model
    service = [d for d in yaml.safe_load_all(s3_object(model["inferenceService"])) if d["kind"] == "InferenceService"]
    assert service[0]["spec"]["predictor"]["model"]["storageUri"] == model["tritonRepository"], service
    assert s3_object(model["onnx"])[:2] and f"{model['servedName']}/config.pbtxt" in "\n".join(
        s3_keys(model["tritonRepository"])), model
    succeeded = condition(st, "Succeeded")
    assert succeeded["status"] == "True" and succeeded["observedGeneration"] == 1
    assert condition(st, "Reconciling")["status"] == "False"
    assert st["observedGeneration"] == 1 and st["jobDeploymentStatus"] == "Complete"
    assert st["jobStatus"] == "SUCCEEDED" and st["startTime"] and st["completionTime"]
    reasons = {e.reason for e in c.events("happy")}
    assert len(reasons) >= 2, f"expected an Event per transition, got {reasons}"


def test_the_logs_are_read_through_the_transferjob_after_the_cluster_is_gone(cluster, tmp_path):
    c = cluster
    result = outcome(c, "succeeds_then_ttl")
    st = result["after_ttl"]["status"]
    assert st["logsURI"] == f"{st['storageURI']}/logs"
    assert not _clusters_of(c, result["rayjob_name"]), "the Ray cluster is still there"
    # A user with a kubeconfig and no S3 keys of their own: the keys come from the job's credentials Secret.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBECONFIG"))}
    env["KUBECONFIG"] = str(c.api.write_kubeconfig(tmp_path / "kubeconfig", user="someone"))
    shown = subprocess.run([str(Path(sys.executable).with_name("graft")), "logs", "-n", NS, "happy"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    labels = [line.split(" | ")[0] for line in shown.stdout.splitlines()]
    # The Head sweep runs in the driver when the features fit (they do here): no worker group, no worker logs.
    assert sorted(set(labels), key=labels.index) == ["FrozenFeatures/driver", "Head/driver"]
    assert "stage FrozenFeatures succeeded" in shown.stdout and "stage Head succeeded" in shown.stdout
    missing = subprocess.run([str(Path(sys.executable).with_name("graft")), "logs", "-n", NS, "nosuchjob"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert (missing.returncode, missing.stderr.strip()) == (1, f"error: TransferJob {NS}/nosuchjob not found")


def test_the_ttl_keeps_the_cluster_up_after_the_finish_then_deletes_it_and_the_rayjob_but_keeps_the_transferjob(
        cluster):
    c = cluster
    result = outcome(c, "succeeds_then_ttl")
    kept = result["after_ttl"]
    assert kept["status"]["phase"] == "Succeeded" and kept["status"]["modelURI"] == result["status"]["modelURI"]
    assert result["rayjob_ttl"] == TTL  # KubeRay's own TTL: it deletes the cluster then
    assert result["clusters_at_finish"], "the Ray cluster was gone at the finish: nothing left to look into"
    assert not _clusters_of(c, result["rayjob_name"])
    # Checkpoints and the model are never deleted by the operator.
    assert s3_keys(kept["status"]["modelURI"]) and s3_keys(kept["status"]["stages"][1]["checkpoint"])
    time.sleep(3)
    assert c.rayjobs("happy") == [], "the RayJob came back after the TTL deleted it"


def test_suspend_then_resume_continues_from_the_ledger(cluster):
    c = cluster
    r = outcome(c, "suspend_resume")
    assert condition(r["suspended"], "Suspended")["status"] == "True"
    assert condition(r["suspended"], "Reconciling")["status"] == "False"
    assert r["rayjob_at_suspend"]["spec"]["suspend"] is True
    assert r["rayjob_suspended"]["status"]["jobDeploymentStatus"] == "Suspended"
    final = r["final"]
    features = next(s for s in final["stages"] if s["type"] == "FrozenFeatures")
    # The finished stage was not run again after the resume.
    assert features["startTime"] == r["features"]["startTime"] and features["endTime"] == r["features"]["endTime"]
    assert final["progress"] == "2/2" and final["modelURI"]
    assert len(r["rayjobs"]) == 1 and r["rayjobs"][0]["spec"]["suspend"] is False
    # Two spec changes later, the status says it has seen them.
    assert r["generation"] == 3 and final["observedGeneration"] == 3
    assert condition(final, "Succeeded")["observedGeneration"] == 3


def test_deleting_a_transferjob_deletes_its_rayjob_but_not_its_storage(cluster):
    c = cluster
    r = outcome(c, "suspend_resume")
    model = r["final"]["modelURI"]
    assert s3_keys(model)
    c.co.delete_namespaced_custom_object(G, V, NS, P, "pause")
    c.wait("pause deleted", lambda: not [o for o in c.api.objects(G, P, NS) if o["metadata"]["name"] == "pause"],
           STATUS_LAG)
    assert c.rayjobs("pause") == []
    assert s3_keys(model), "the operator deleted the model from object storage"


def test_failed_attempt_is_retried_and_resumes_from_the_ledger(cluster):
    c = cluster
    r = outcome(c, "retry")
    final = r["final"]
    assert final["attempts"] == 2
    assert r["rayjob"]["status"]["failed"] == 1 and r["rayjob"]["spec"]["backoffLimit"] == 2
    features = next(s for s in final["stages"] if s["type"] == "FrozenFeatures")
    assert features["startTime"] == r["features"]["startTime"], "FrozenFeatures ran again on the retry"
    assert final["progress"] == "2/2" and final["modelURI"]


def test_operator_killed_and_restarted_mid_job_creates_no_duplicate(cluster):
    c = cluster
    r = outcome(c, "operator_restart")
    assert len(r["rayjobs"]) == 1
    creates = [q for q in c.api.requests_by(OPERATOR_USER) if q.namespace == NS_RESTART and q.verb == "create"
               and q.resource == "rayjobs" and q.status == 201]
    assert len(creates) == 1, creates
    assert r["final"]["attempts"] == 1 and r["final"]["progress"] == "2/2"
    assert r["after"]["phase"] == "Succeeded" and r["after"]["conditions"] == r["final"]["conditions"]
    assert c.operators[NS_RESTART].starts == 3


def test_operator_requests_stay_within_its_rbac_rules(cluster):
    """Audit every request the operator processes made (after the other tests ran) against rbac.rules()."""
    from support.rbac_rules import allows

    c = cluster
    for name in SCENARIOS:  # let every scenario finish so that its calls are in the log
        if c.futures[name].done() is False:
            try:
                c.futures[name].result(timeout=TRAIN_TIMEOUT + 60)
            except Exception:  # noqa: S110 (the scenario's own test reports it)
                pass
    calls = {(r.verb, r.group, r.rbac_resource) for r in c.api.requests_by(OPERATOR_USER)}
    assert ("create", "ray.io", "rayjobs") in calls and ("patch", G, "transferjobs/status") in calls
    outside = sorted(call for call in calls if not allows(call[0], call[1], call[2]))
    assert outside == [], f"operator calls outside its RBAC rules: {outside}"
    assert "graft" in c.operators[NS].metrics()
