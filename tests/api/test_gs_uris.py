"""gs:// in a TransferJob: GCS's bucket naming rules (https://cloud.google.com/storage/docs/buckets#naming, quoted in
graft/storage_backends/gcs.py), one line naming the field for a bad name, no credentials Secret, and no
"local path" warning for a cluster."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from graft.api.validation import cluster_warnings, validate_document, validate_for_cluster

BASE = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "digits-lpft.yaml").read_text())

ACCEPTED = {
    "bucket-only": "gs://my-bucket",
    "underscore": "gs://my_bucket-1/train",  # '_' is allowed on GCS (not on S3)
    "dotted-long": "gs://" + ".".join(["a" * 63] * 3) + "/x",  # 191 characters: dots allow up to 222
    "three-chars": "gs://abc/x",
}
REFUSED = {
    "no-bucket": ("gs:///train", "has no bucket"),
    "upper-case": ("gs://My-Bucket/train", "not a valid GCS bucket name"),
    "two-chars": ("gs://ab/train", "not a valid GCS bucket name"),
    "64-chars-without-dots": ("gs://" + "a" * 64 + "/x", "not a valid GCS bucket name"),
    "component-over-63": ("gs://" + "a" * 64 + ".b/x", "not a valid GCS bucket name"),
    "ends-with-dash": ("gs://bucket-/x", "not a valid GCS bucket name"),
    "ip-address": ("gs://192.168.5.4/x", "not a valid GCS bucket name"),
    "goog-prefix": ("gs://goog-data/x", "not a valid GCS bucket name"),
    "google-inside": ("gs://my-g00gle-data/x", "not a valid GCS bucket name"),
}


def _with(train: str | None = None, storage: dict | None = None) -> dict:
    doc = copy.deepcopy(BASE)
    if train is not None:
        doc["spec"]["data"]["train"] = train
    if storage is not None:
        doc["spec"]["storage"] = storage
    return doc


@pytest.mark.parametrize("uri", list(ACCEPTED.values()), ids=list(ACCEPTED))
def test_gs_uris_with_valid_buckets_are_accepted_for_data_and_storage(uri):
    job, problems = validate_document(_with(train=uri, storage={"uri": uri}))
    assert problems == [] and job is not None


@pytest.mark.parametrize(("uri", "fragment"), list(REFUSED.values()), ids=list(REFUSED))
def test_bad_gs_buckets_are_refused_in_one_line_naming_the_field(uri, fragment):
    _, problems = validate_document(_with(storage={"uri": uri}))
    assert [p.path for p in problems] == ["spec.storage.uri"]
    assert fragment in problems[0].reason and "\n" not in problems[0].reason


def test_a_credentials_secret_on_gs_storage_is_refused_saying_what_gs_uses():
    _, problems = validate_document(_with(storage={"uri": "gs://bucket-a/jobs", "credentialsSecret": {"name": "k"}}))
    assert len(problems) == 1 and problems[0].path.startswith("spec.storage")
    assert "Workload Identity" in problems[0].reason


def test_gs_storage_and_data_draw_no_local_path_warning_for_a_cluster():
    spec = _with(train="gs://bucket-a/train", storage={"uri": "gs://bucket-a/jobs"})["spec"]
    job, problems = validate_for_cluster(spec)
    assert job is not None and problems == []
    assert cluster_warnings(job) == []
