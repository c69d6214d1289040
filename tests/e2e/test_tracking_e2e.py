"""End to end with MLflow: the real operator process, the fake KubeRay running the real trainer on the session's Ray
cluster, moto S3 and a real `mlflow server`. A TransferJob with `spec.tracking.mlflow` (credentials from a Secret
that holds only basic-auth keys: the token key is optional) ends with its MLflow run and registered model version
in `status.tracking`, which `kubectl get tj -o wide` shows through the CRD's printer columns."""

from __future__ import annotations

import io
import uuid

import pytest
from e2e.test_operator_e2e import NS, Cluster
from mlflow import MlflowClient
from support.committed import COMMITTED_CRD
from support.fake_kuberay import FakeKubeRay
from support.kube import emulated_api
from support.operator_proc import OperatorProcess
from support.s3 import TEST_CREDENTIALS, make_bucket

from graft.api.crd import build_crd

pytestmark = pytest.mark.slow


def _column(obj: dict, json_path: str):
    """A printer column's value: its jsonPath (`.status.tracking.runID`) followed in the object, as kubectl does."""
    node = obj
    for part in json_path.lstrip(".").split("."):
        node = (node or {}).get(part)
    return node


def test_a_tracked_job_shows_its_mlflow_run_and_model_version_in_status_and_wide_columns(
        s3_endpoint, mlflow_server, ray_cluster, tmp_path):
    bucket = f"graft-e2e-ml-{uuid.uuid4().hex[:8]}"
    make_bucket(s3_endpoint, bucket)
    import boto3
    import torch

    from graft_trainer.models import build

    weights = io.BytesIO()
    torch.save(build("smallcnn", 10, 8).state_dict(), weights)
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").put_object(
        Bucket=bucket, Key="weights/smallcnn.pt", Body=weights.getvalue())
    with emulated_api(namespaces=[NS]) as api:
        api.apply_crd(COMMITTED_CRD)
        c = Cluster(api, f"s3://{bucket}", s3_endpoint)
        c.core.create_namespaced_secret(NS, {"metadata": {"name": "s3-credentials"}, "stringData": {
            "access-key": TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "secret-key": TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}})
        c.core.create_namespaced_secret(NS, {"metadata": {"name": "mlflow-credentials"}, "stringData": {
            "MLFLOW_TRACKING_USERNAME": "graft", "MLFLOW_TRACKING_PASSWORD": "not-checked-by-this-server"}})
        c.operators[NS] = OperatorProcess(api, NS, tmp_path / "operator").start()
        c.kuberays[NS] = FakeKubeRay(api, NS, tmp_path / "kuberay", env={
            "RAY_ADDRESS": ray_cluster.address, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}).start()
        try:
            c.create("tracked", tracking={"mlflow": {
                "trackingURI": mlflow_server.url, "experiment": "graft-e2e", "registeredModelName": "digits-e2e",
                "credentialsSecret": {"name": "mlflow-credentials"}}})
            try:
                st = c.wait_phase("tracked", "Succeeded")
                st = c.wait("status.tracking Succeeded",
                            lambda: (s := c.status("tracked")).get("tracking", {}).get("state") == "Succeeded" and s,
                            30, "tracked")
            except AssertionError as e:
                raise AssertionError(f"{e}\n{c.diagnostics()}") from e
            obj = c.get("tracked")
        finally:
            c.kuberays[NS].stop()
            c.operators[NS].stop()
            c.client.close()

    tracking = st["tracking"]
    client = MlflowClient(mlflow_server.url)
    versions = client.search_model_versions("name = 'digits-e2e'")
    assert [(v.version, v.run_id) for v in versions] == [(tracking["modelVersion"], tracking["runID"])]
    run = client.get_run(tracking["runID"])
    assert run.data.tags["graft.dev/job-uid"] == obj["metadata"]["uid"]
    assert run.data.tags["graft.dev/job-namespace"] == NS
    assert tracking["trackingURI"] == mlflow_server.url and tracking["registeredModel"] == "digits-e2e"
    columns = {col["name"]: _column(obj, col["jsonPath"])
               for col in build_crd()["spec"]["versions"][0]["additionalPrinterColumns"] if col.get("priority")}
    assert (columns["MLflow Run"], columns["Model Version"]) == (tracking["runID"], "1")
    # The operator never read the MLflow Secret (the pods got it by secretKeyRef): no credential in the status.
    assert "not-checked-by-this-server" not in str(obj)
