"""Shared fixtures. Services the tests need are started here, by the tests themselves."""

from __future__ import annotations

import os
import uuid

import pytest

# No test downloads anything (timm and huggingface_hub read this when they are first imported, so it is set before
# any test module imports them): a test that would fetch weights from the Hugging Face Hub fails instead.
os.environ["HF_HUB_OFFLINE"] = "1"

from support.gcs import EMULATOR_ENV, fake_gcs_server
from support.gcs import make_bucket as make_gcs_bucket
from support.kube import emulated_api
from support.s3 import TEST_CREDENTIALS, make_bucket, moto_server


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 for the whole session; AWS_* variables point at it."""
    with moto_server() as endpoint:
        mp = pytest.MonkeyPatch()
        for key, value in {**TEST_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}.items():
            mp.setenv(key, value)
        try:
            yield endpoint
        finally:
            mp.undo()


@pytest.fixture(scope="session")
def gcs_endpoint():
    """A fake-gcs-server on 127.0.0.1 for the whole session; STORAGE_EMULATOR_HOST points at it."""
    with fake_gcs_server() as endpoint:
        mp = pytest.MonkeyPatch()
        mp.setenv(EMULATOR_ENV, endpoint)
        try:
            yield endpoint
        finally:
            mp.undo()


@pytest.fixture()
def gcs_bucket(gcs_endpoint):
    """A fresh, empty GCS bucket on the emulator; returns its `gs://name` URI."""
    name = f"graft-test-{uuid.uuid4().hex[:12]}"
    make_gcs_bucket(gcs_endpoint, name)
    return f"gs://{name}"


@pytest.fixture(scope="session")
def mlflow_server(s3_endpoint, tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 for the whole session: SQLite backend, artifacts on the moto server."""
    from support.mlflow_server import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("mlflow"), s3_endpoint, f"mlflow-{uuid.uuid4().hex[:12]}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint):
    """One local Ray cluster for the session (support/ray_cluster.py), started at first use: drivers given its
    `.address` in RAY_ADDRESS join it as a RayJob's driver joins its RayCluster, instead of paying a Ray start-up each.
    Its processes have the session's S3 settings (moto's endpoint and test keys), as a RayCluster's pods have the
    job's storage settings (graft_operator/builder.py). A test about Ray's own start-up or death (a driver killed with
    its Ray, a Ray Train worker killed, Ctrl-C) starts its own Ray instead."""
    from support.ray_cluster import RayCluster

    with RayCluster(num_cpus=8) as cluster:
        yield cluster


@pytest.fixture()
def shared_ray(ray_cluster, monkeypatch):
    """RAY_ADDRESS of the session's Ray cluster for this test: drivers it starts, in this process or not, join it."""
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.address)
    # What graft_trainer/executors.py sets for a Ray it starts itself (one process less per fit, ~1 CPU-second): a
    # cluster on this machine is never drained. Ray Train takes it from the driver's environment.
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    return ray_cluster.address


@pytest.fixture()
def s3_bucket(s3_endpoint):
    """A fresh, empty bucket; returns its `s3://name` URI."""
    name = f"graft-test-{uuid.uuid4().hex[:12]}"
    make_bucket(s3_endpoint, name)
    return f"s3://{name}"


@pytest.fixture()
def kube_api():
    """A fresh emulated Kubernetes API server (support/kube/) with the committed TransferJob CRD applied
    through the API and a `graft-test` namespace; `.kubeconfig_path`, `.client()`, `.request_log`."""
    from support.committed import COMMITTED_CRD

    with emulated_api(namespaces=["graft-test"], crds=[COMMITTED_CRD]) as api:
        yield api


@pytest.fixture()
def fake_kuberay(kube_api, tmp_path):
    """A fake KubeRay controller (support/fake_kuberay.py) running RayJobs of `graft-test` as local processes."""
    from support.fake_kuberay import FakeKubeRay

    with FakeKubeRay(kube_api, "graft-test", tmp_path / "kuberay") as controller:
        yield controller


@pytest.fixture(autouse=True, scope="session")
def _quiet_ray():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    yield
