"""A job's own S3 endpoint (`spec.storage.endpoint`) reaches the storage calls and Ray's workers as an argument, not
by being written into this process's environment for another module to read back (issue 24 part 5)."""

from __future__ import annotations

import os

import pytest

from graft import storage
from graft.api.models import TransferJob
from graft.storage_backends import gcs
from graft_trainer.jobroot import apply_storage_env


def _job(bucket: str, endpoint: str | None, region: str | None = None) -> TransferJob:
    st = {"uri": f"{bucket}/jobs", **({"endpoint": endpoint} if endpoint else {}), **({"region": region} if region
                                                                                         else {})}
    return TransferJob.model_validate({
        "apiVersion": "graft.dev/v1alpha1", "kind": "TransferJob", "metadata": {"name": "ep", "uid": "ep-1"},
        "spec": {"model": {"backbone": "smallcnn", "numClasses": 2, "weights": f"{bucket}/w.pt"},
                 "data": {"train": "builtin:digits"},
                 "stages": [{"type": "FrozenFeatures"}], "storage": st}})


@pytest.fixture
def spec_endpoint_only(s3_endpoint, monkeypatch):
    """The moto server known only through the spec, as in a pod whose Secret holds just the keys."""
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    # Nor another scheme's settings: a session's GCS emulator (the gcs_endpoint fixture) would go to workers too.
    monkeypatch.delenv(gcs.EMULATOR_ENV, raising=False)
    yield s3_endpoint
    storage.use_endpoint(None)
    storage.configure(storage.DEFAULT_RETRY_SECONDS)


def test_a_jobs_endpoint_reaches_storage_without_touching_the_environment(spec_endpoint_only, s3_bucket):
    apply_storage_env(_job(s3_bucket, spec_endpoint_only, region="eu-west-1"))
    assert "AWS_ENDPOINT_URL" not in os.environ and "AWS_REGION" not in os.environ
    storage.write_bytes(f"{s3_bucket}/jobs/probe.txt", b"written through the spec's endpoint")
    assert storage.read_bytes(f"{s3_bucket}/jobs/probe.txt") == b"written through the spec's endpoint"
    # Ray's workers read the environment: they are handed the same settings explicitly.
    assert storage.worker_env() == {"AWS_ENDPOINT_URL": spec_endpoint_only, "AWS_REGION": "eu-west-1"}


def test_the_next_job_without_an_endpoint_does_not_inherit_the_last_ones(spec_endpoint_only, s3_bucket):
    apply_storage_env(_job(s3_bucket, spec_endpoint_only))
    apply_storage_env(_job(s3_bucket, None))
    assert storage.env_s3_options().endpoint is None and "AWS_ENDPOINT_URL" not in storage.worker_env()


def test_the_environments_s3_only_endpoint_still_wins(spec_endpoint_only, s3_bucket, monkeypatch):
    # AWS_ENDPOINT_URL_S3 is the AWS SDKs' service-specific override: above the job's endpoint, as before.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", spec_endpoint_only)
    apply_storage_env(_job(s3_bucket, "http://127.0.0.1:9"))
    assert storage.env_s3_options().endpoint == spec_endpoint_only
