"""What the validator must accept: no false alarms on legitimate manifests (the corpus covers rejections)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from graft.api.validation import load_job, validate_document, validate_spec, validate_stream

BASE = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "digits-lpft.yaml").read_text())

ACCEPTED = {
    "s3-bucket-only": ("data", "train", "s3://my-bucket"),
    "s3-dots-and-at-in-key": ("data", "train", "s3://my.bucket-1/data/v2@2024/train"),
    "file-absolute": ("data", "train", "file:///data/train"),
    "relative-local-path": ("data", "validation", "data/val"),
    "absolute-local-path": ("data", "validation", "/mnt/data/val"),
    "password-named-folder": ("data", "validation", "s3://bucket-a/password-reset-screens/val"),
    "torchvision-weights": ("model", "weights", "torchvision:IMAGENET1K_V2"),
    "s3-weights": ("model", "weights", "s3://models-a/resnet50.pt"),
    "integer-cpus": ("workers", "cpus", 4),
    "milli-cpus": ("workers", "cpus", "500m"),
    "exponent-memory": ("workers", "memory", "1e9"),
}


@pytest.mark.parametrize("case", list(ACCEPTED), ids=list(ACCEPTED))
def test_accepts_legitimate_values(case):
    section, field, value = ACCEPTED[case]
    doc = copy.deepcopy(BASE)
    doc["spec"][section][field] = value
    job, problems = validate_document(doc)
    assert problems == [] and job is not None


def test_secret_reference_and_key_like_words_are_not_credentials():
    doc = copy.deepcopy(BASE)
    doc["spec"]["storage"] = {
        "uri": "s3://ckpt-bucket/graft",
        "endpoint": "https://minio.storage.svc:9000",
        "credentialsSecret": {"name": "graft-s3", "accessKeyIdKey": "AWS_ACCESS_KEY_ID",
                              "secretAccessKeyKey": "AWS_SECRET_ACCESS_KEY"},
    }
    doc["spec"]["scheduling"] = {"nodeSelector": {"tokenizer": "fast", "team": "api-keys"}}
    doc["spec"]["image"] = "registry.example.com/graft/trainer-token-free:1.0"
    assert validate_document(doc)[1] == []


def test_spec_problems_name_spec_paths():
    spec = copy.deepcopy(BASE["spec"])
    spec["stages"].reverse()
    parsed, problems = validate_spec(spec)
    assert parsed is None
    assert any(str(p).startswith("spec.stages[1].type: 'Head' cannot come after 'FullFineTune'") for p in problems)


def test_load_job_picks_the_one_transferjob_among_other_kinds():
    text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: ml}\n---\n" + yaml.safe_dump(BASE)
    job = load_job(text)
    assert job.metadata.name == "digits-lpft" and job.spec.stages[0].type == "Pretrain"


def test_models_round_trip_through_json():
    """What the operator hands the trainer (model_dump by alias, as JSON) validates again unchanged."""
    job = load_job(yaml.safe_dump(BASE))
    again = load_job(job.model_dump_json(by_alias=True, exclude_none=True))
    assert again == job


def test_exponent_numbers_are_numbers_as_for_kubectl():
    text = yaml.safe_dump(BASE).replace("lr: 0.003", "lr: 3e-3")
    assert "lr: 3e-3" in text
    assert validate_stream(text) == (1, [])
    assert load_job(text).spec.stages[3].lr == 0.003


LOCAL_HINT = "a local path: on a cluster it is each pod's own filesystem"
CLUSTER_WARNING_CASES = [
    pytest.param({"storage": {"uri": "s3://ckpt-bucket/graft"}}, [], id="all-shared-no-warning"),
    pytest.param({"storage": {"uri": "file:///var/graft"}}, ["spec.storage.uri"], id="file-storage"),
    pytest.param({"storage": {"uri": "runs"}}, ["spec.storage.uri"], id="relative-storage"),
    pytest.param({"storage": {"uri": "s3://ckpt-bucket/graft"},
                  "data": {"train": "data/train", "validation": "file:///data/val", "imageSize": 8},
                  "model": {"backbone": "smallcnn", "numClasses": 10, "weights": "/models/smallcnn.pt"}},
                 ["spec.model.weights", "spec.data.train", "spec.data.validation"], id="local-data-and-weights"),
    pytest.param({"storage": {"uri": "s3://ckpt-bucket/graft"},
                  "stages": [{"type": "Pretrain", "data": "/src", "numClasses": 10}, {"type": "FrozenFeatures"}]},
                 ["spec.stages[0].data"], id="local-pretrain-data"),
]


@pytest.mark.parametrize(("overrides", "paths"), CLUSTER_WARNING_CASES)
def test_cluster_warnings_name_each_local_path(overrides, paths):
    from graft.api.validation import cluster_warnings, validate_for_cluster

    raw = {**copy.deepcopy(BASE["spec"]), **overrides}
    spec, problems = validate_for_cluster(raw)
    assert problems == [] and spec is not None
    warnings = cluster_warnings(spec)
    assert [w.path for w in warnings] == paths
    assert all(LOCAL_HINT in w.reason for w in warnings)


def test_cluster_needs_storage_which_graft_run_does_not():
    from graft.api.validation import validate_for_cluster

    raw = copy.deepcopy(BASE["spec"])
    assert validate_spec(copy.deepcopy(raw))[0] is not None
    spec, problems = validate_for_cluster(raw)
    assert spec is None and [p.path for p in problems] == ["spec.storage"]


INLINE_CREDENTIALS = {
    # An inline credential's hint names the Secret reference of the part of the spec it was found in.
    "mlflow-password": (("tracking", "mlflow"), "password", "hunter2", "spec.tracking.mlflow.credentialsSecret"),
    "mlflow-url-userinfo": (("tracking", "mlflow"), "trackingURI", "http://u:p@mlflow:5000",
                            "spec.tracking.mlflow.credentialsSecret"),
    "storage-secret-key": (("storage",), "secretAccessKey", "abc", "spec.storage.credentialsSecret"),
}


@pytest.mark.parametrize("case", list(INLINE_CREDENTIALS), ids=list(INLINE_CREDENTIALS))
def test_inline_credentials_point_to_their_own_secret_field(case):
    where, field, value, hint = INLINE_CREDENTIALS[case]
    spec = copy.deepcopy(BASE["spec"])
    spec["storage"] = {"uri": "s3://ckpt-bucket/graft"}
    spec["tracking"] = {"mlflow": {"trackingURI": "http://mlflow:5000"}}
    section = spec
    for key in where:
        section = section[key]
    section[field] = value
    problems = [str(p) for p in validate_spec(spec)[1] if field in str(p)]
    assert problems and all(hint in p for p in problems), problems
