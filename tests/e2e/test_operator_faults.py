"""Faults around a running job, end to end: the real `graft operator` process against the emulated API server, the
fake KubeRay running the real trainer, moto S3. Each test makes one fault a cluster makes and checks what a user sees.

- a RayJob deleted by hand while its job runs is created again and the job resumes from its ledger (as KubeRay does
  with a deleted RayCluster, and Kubeflow Trainer with a deleted JobSet);
- a TransferJob deleted while it trains takes its children with it (ownerReferences, garbage collector) and leaves
  its storage;
- an operator that loses its watch (its API server restarts, resuming the watch answers 410 Gone) lists again and
  follows its jobs on, including what changed while it was away (a RayJob deleted: made again; a TransferJob
  deleted: no longer followed nor counted).

The jobs are the e2e module's smallest (one FrozenFeatures pass and three Head epochs on 100 digits); the tests
stop waiting as soon as what they check has happened.
"""

from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import boto3
import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException
from support.operator_proc import OPERATOR_USER, OperatorProcess
from support.s3 import TEST_CREDENTIALS
from support.trainer_data import NO_SERVING, SMOKE_CHECKS

pytestmark = pytest.mark.slow

NS = "graft-test"  # the kube_api and fake_kuberay fixtures' namespace
G, V, P = "graft.dev", "v1alpha1", "transferjobs"
LABEL = "graft.dev/transferjob"
TRAIN_TIMEOUT = 300
LAG = 20  # seconds for the operator (and the fake KubeRay) to act on a change


class Job:
    """One TransferJob and what a user with kubectl sees of it."""

    def __init__(self, api, name: str):
        self.api, self.name = api, name
        self.client = api.client()
        self.co = kubernetes.client.CustomObjectsApi(self.client)
        self.core = kubernetes.client.CoreV1Api(self.client)

    def create(self, bucket: str, endpoint: str) -> None:
        self.co.create_namespaced_custom_object(G, V, NS, P, transferjob(self.name, bucket, endpoint))

    def status(self) -> dict[str, Any]:
        try:
            return self.co.get_namespaced_custom_object(G, V, NS, P, self.name).get("status") or {}
        except ApiException as e:
            if e.status == 404:
                return {}
            raise

    def rayjobs(self) -> list[dict[str, Any]]:
        return self.co.list_namespaced_custom_object("ray.io", "v1", NS, "rayjobs",
                                                     label_selector=f"{LABEL}={self.name}")["items"]

    def warnings(self, reason: str) -> list[str]:
        return [e.message for e in self.core.list_namespaced_event(NS).items
                if e.involved_object.name == self.name and e.type == "Warning" and e.reason == reason]

    def stage(self, stage: str) -> dict[str, Any] | None:
        return next((s for s in self.status().get("stages") or [] if s["type"] == stage), None)


def transferjob(name: str, bucket: str, endpoint: str) -> dict[str, Any]:
    """The e2e module's smallest job, stored on S3."""
    return {"apiVersion": f"{G}/{V}", "kind": "TransferJob", "metadata": {"name": name}, "spec": {
        "model": {"backbone": "smallcnn", "numClasses": 10, "weights": f"{bucket}/weights/smallcnn.pt"},
        "data": {"train": "builtin:digits", "imageSize": 8, "shotsPerClass": 10},
        "stages": [{"type": "FrozenFeatures"}, {"type": "Head", "epochs": 3, "lr": 0.05}],
        "checks": SMOKE_CHECKS,
        "serving": NO_SERVING,
        "workers": {"replicas": 2, "cpus": "0.5", "memory": "1Gi"},
        "storage": {"uri": f"{bucket}/jobs", "endpoint": endpoint, "region": "us-east-1",
                    "credentialsSecret": {"name": "s3-credentials", "accessKeyIdKey": "access-key",
                                          "secretAccessKeyKey": "secret-key"}},
        "runPolicy": {"backoffLimit": 0},
    }}


def wait(what: str, check: Callable[[], Any], timeout: float, diagnostics: Callable[[], str] = str) -> Any:
    """Poll `check` until it returns something true; fail naming `what` and the last value."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}\n{diagnostics()}")


def stage_succeeded(job: Job, stage: str) -> dict[str, Any] | None:
    found = job.stage(stage)
    if job.status().get("phase") in ("Succeeded", "Failed"):
        raise AssertionError(f"{job.name} ended {job.status()} before {stage} was seen Succeeded")
    return found if found and found.get("state") == "Succeeded" else None


def s3_keys(uri: str, endpoint: str) -> list[str]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/")
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_a_lost_connection_ends_the_watch_and_an_old_resource_version_is_gone_after_it(kube_api):
    """The emulator's side of a lost watch, as the operator test above relies on it (support/kube: connection_lost)."""
    with kube_api.client("someone") as mine, kube_api.client() as admin:
        co, core = kubernetes.client.CustomObjectsApi(mine), kubernetes.client.CoreV1Api(admin)
        since = co.list_namespaced_custom_object(G, V, NS, P)["metadata"]["resourceVersion"]
        seen: list[str] = []

        def follow() -> None:
            for event in kubernetes.watch.Watch().stream(co.list_namespaced_custom_object, G, V, NS, P,
                                                         resource_version=since, timeout_seconds=30):
                seen.append(event["type"])

        watching = threading.Thread(target=follow)
        watching.start()
        time.sleep(0.5)
        with kube_api.connection_lost("someone"):
            core.create_namespaced_config_map(NS, {"metadata": {"name": "meanwhile"}})
            kubernetes.client.CustomObjectsApi(admin).create_namespaced_custom_object(
                G, V, NS, P, transferjob("meanwhile", "s3://b", "http://127.0.0.1:9"))
            watching.join(5)
            assert not watching.is_alive() and seen == [], "the stream outlived the connection, or an event crossed"
        # Resuming from before the restart: the ERROR event the kubernetes client turns into ApiException(410).
        with pytest.raises(ApiException) as gone:
            list(kubernetes.watch.Watch().stream(co.list_namespaced_custom_object, G, V, NS, P,
                                                 resource_version=since, timeout_seconds=2))
        assert gone.value.status == 410 and gone.value.reason.startswith("Expired: too old resource version: ")
        # Listing again and watching from there works, and the list has what happened meanwhile.
        listed = co.list_namespaced_custom_object(G, V, NS, P)
        assert [o["metadata"]["name"] for o in listed["items"]] == ["meanwhile"]
        assert list(kubernetes.watch.Watch().stream(co.list_namespaced_custom_object, G, V, NS, P, resource_version=
                                                    listed["metadata"]["resourceVersion"], timeout_seconds=1)) == []


@pytest.fixture()
def cluster(kube_api, fake_kuberay, s3_endpoint, s3_bucket, ray_cluster, tmp_path):
    """The API server, the fake KubeRay (its RayJobs' drivers join the session's Ray cluster) and the operator, a
    bucket with the backbone's weights and the storage Secret; yields (api, kuberay, operator, bucket)."""
    fake_kuberay.extra_env["RAY_ADDRESS"] = ray_cluster.address  # read at each attempt's start
    import torch

    from graft_trainer.models import build

    weights = io.BytesIO()
    torch.save(build("smallcnn", 10, 8).state_dict(), weights)
    bucket = s3_bucket.removeprefix("s3://")
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").put_object(
        Bucket=bucket, Key="weights/smallcnn.pt", Body=weights.getvalue())
    with kube_api.client() as client:
        kubernetes.client.CoreV1Api(client).create_namespaced_secret(NS, {
            "metadata": {"name": "s3-credentials"}, "stringData": {
                "access-key": TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                "secret-key": TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}})
    operator = OperatorProcess(kube_api, NS, tmp_path / "operator").start()
    try:
        yield kube_api, fake_kuberay, operator, s3_bucket
    finally:
        operator.stop()


def _diagnostics(operator: OperatorProcess, kuberay) -> Callable[[], str]:
    return lambda: (f"===== operator (tail)\n{operator.log()[-5000:]}\n===== fake KubeRay errors: "
                    f"{kuberay.errors[-10:]}\n{kuberay.all_logs(2500)}")


def _rayjob_creates(api) -> list[Any]:
    return [r for r in api.requests_by(OPERATOR_USER) if r.verb == "create" and r.resource == "rayjobs"
            and r.status == 201]


def test_a_rayjob_deleted_by_hand_is_created_again_and_the_job_resumes_from_its_ledger(cluster, s3_endpoint):
    api, kuberay, operator, bucket = cluster
    diag = _diagnostics(operator, kuberay)
    job = Job(api, "redo")
    job.create(bucket, s3_endpoint)
    features = wait("FrozenFeatures Succeeded", lambda: stage_succeeded(job, "FrozenFeatures"), TRAIN_TIMEOUT, diag)
    [first] = job.rayjobs()
    job.co.delete_namespaced_custom_object("ray.io", "v1", NS, "rayjobs", first["metadata"]["name"])
    again = wait("a new RayJob", lambda: [r for r in job.rayjobs() if r["metadata"]["uid"] != first["metadata"][
        "uid"]], LAG, diag)
    final = wait("Succeeded", lambda: job.status().get("phase") == "Succeeded" and job.status(), TRAIN_TIMEOUT, diag)
    assert again[0]["metadata"]["name"] == first["metadata"]["name"] == final["rayJobName"]
    assert [w for w in job.warnings("RayJobRecreated") if first["metadata"]["name"] in w], diag()
    # The finished stage was not run again: its times are those of the first RayJob's run.
    assert (job.stage("FrozenFeatures")["startTime"], job.stage("FrozenFeatures")["endTime"]) == (
        features["startTime"], features["endTime"])
    assert final["progress"] == "2/2" and final["modelURI"]
    assert [r["metadata"]["uid"] for r in job.rayjobs()] == [again[0]["metadata"]["uid"]]
    assert len(_rayjob_creates(api)) == 2


def test_a_transferjob_deleted_while_it_trains_takes_its_children_and_leaves_its_storage(cluster, s3_endpoint):
    api, kuberay, operator, bucket = cluster
    diag = _diagnostics(operator, kuberay)
    job = Job(api, "gone")
    job.create(bucket, s3_endpoint)
    wait("FrozenFeatures Succeeded", lambda: stage_succeeded(job, "FrozenFeatures"), TRAIN_TIMEOUT, diag)
    storage_uri = job.status()["storageURI"]
    [rayjob] = job.rayjobs()
    cluster_name = rayjob["status"]["rayClusterName"]
    stored = s3_keys(storage_uri, s3_endpoint)
    job.co.delete_namespaced_custom_object(G, V, NS, P, job.name)  # kubectl delete: background propagation
    # A real cluster's garbage collector deletes the dependents of a deleted owner in the background
    # (kubernetes.io/docs/concepts/architecture/garbage-collection/, "background cascading deletion";
    # pkg/controller/garbagecollector/garbagecollector.go attemptToDeleteItem); the emulator's does the same.
    wait("the RayJob, its RayCluster and its pods gone", lambda: not job.rayjobs() and not [
        o for o in api.objects("ray.io", "rayclusters", NS) if o["metadata"]["name"] == cluster_name] and not [
        p for p in api.objects("", "pods", NS) if p["metadata"].get("labels", {}).get("ray.io/cluster") ==
        cluster_name], LAG, diag)
    wait("the trainer stopped", lambda: all(r.proc is None for r in kuberay.runs.values()), LAG, diag)
    time.sleep(5)  # what the operator does once the job is gone: nothing, and it creates nothing again
    assert job.rayjobs() == [] and len(_rayjob_creates(api)) == 1, diag()
    kept = s3_keys(storage_uri, s3_endpoint)
    # The trainer itself rotates a stage's checkpoints (keep the last few) until it is stopped, so an old epoch's
    # keys may go between the snapshot and the stop: what the operator must keep is every other key, and for each
    # stage that had checkpoints, a whole one (manifest.json is written last).
    lost = sorted(set(k for k in stored if "/checkpoints/" not in k) - set(kept))
    assert not lost, f"storage lost: {lost}"
    for run in {m[1] for k in stored if (m := re.match(r"(.*/checkpoints/[^/]+/)epoch_", k))}:
        assert [k for k in kept if k.startswith(run + "epoch_") and k.endswith("/manifest.json")], (
            f"no checkpoint left under {run}", kept)
    assert any(k.endswith("/ledger.json") for k in kept) and any("/features/" in k for k in kept), kept


def _jobs_in_phase(operator: OperatorProcess) -> dict[str, float]:
    """The graft_transferjobs gauge, by phase."""
    return {line.split('"')[1]: float(line.split()[-1]) for line in operator.metrics().splitlines()
            if line.startswith("graft_transferjobs{")}


def test_an_operator_that_loses_its_watch_lists_again_and_follows_what_changed_meanwhile(cluster, s3_endpoint):
    api, kuberay, operator, bucket = cluster
    diag = _diagnostics(operator, kuberay)
    job, ghost = Job(api, "blink"), Job(api, "ghost")
    for j in (job, ghost):
        j.create(bucket, s3_endpoint)
        wait(f"{j.name}'s RayJob running", lambda j=j: j.status().get("phase") == "Running", LAG + 10, diag)
    [first] = job.rayjobs()
    with api.connection_lost(OPERATOR_USER):
        # While the operator cannot see it, one job's RayJob goes (a user's doing, or a cleanup's), and another job
        # is deleted (and its RayJob by the garbage collector).
        job.co.delete_namespaced_custom_object("ray.io", "v1", NS, "rayjobs", first["metadata"]["name"])
        ghost.co.delete_namespaced_custom_object(G, V, NS, P, ghost.name)
        back = time.time()
    # Its watches came back with a 410 and it listed again: the DELETED event never reached it.
    wait("the operator's RayJob watch refused with 410", lambda: [
        e for e in api.handler.expired_watches if e[:2] == (OPERATOR_USER, "rayjobs")], LAG, diag)
    wait("the operator listing RayJobs again", lambda: [r for r in api.requests_by(OPERATOR_USER) if r.verb == "list"
                                                        and r.resource == "rayjobs" and r.time > back], LAG, diag)
    again = wait("a new RayJob", lambda: [r for r in job.rayjobs() if r["metadata"]["uid"] != first["metadata"][
        "uid"]], LAG, diag)
    assert [w for w in job.warnings("RayJobRecreated") if first["metadata"]["name"] in w], diag()
    # And it follows on: a spec change reaches the new RayJob, and KubeRay's answer the job's status.
    job.co.patch_namespaced_custom_object(G, V, NS, P, job.name, {"spec": {"runPolicy": {"suspend": True}}})
    wait("Suspended", lambda: job.status().get("phase") == "Suspended", LAG, diag)
    assert [r["metadata"]["uid"] for r in job.rayjobs()] == [again[0]["metadata"]["uid"]]
    # The job deleted meanwhile is not followed (nor counted) any more, and nothing of it was made again.
    wait("the gauge without the deleted job", lambda: _jobs_in_phase(operator).get("Running") == 0, LAG, diag)
    assert _jobs_in_phase(operator)["Suspended"] == 1 and ghost.rayjobs() == [], _jobs_in_phase(operator)
    assert "TransferJob graft-test/ghost was deleted while the watch was lost" in operator.log(), diag()
