"""The pure RayJob builder against expected dicts (table-driven, named cases)."""
# ruff: noqa: S104, S108 (expected pod specs: an emptyDir at /tmp, the dashboard on all interfaces)

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
from support.diff import diff

from graft.api.validation import validate_document, validate_for_cluster, validate_spec
from graft_operator import builder

UID = "5c1f7a0e-1d2b-4c3d-9e8f-0a1b2c3d4e5f"

BASE_SPEC = {
    "model": {"backbone": "smallcnn", "numClasses": 10, "weights": "s3://models/smallcnn.pt"},
    "data": {"train": "builtin:digits-noisy", "imageSize": 8},
    "stages": [{"type": "FrozenFeatures"}, {"type": "Head", "epochs": 5}],
    "storage": {"uri": "s3://bucket/jobs"},
}


def _spec(**overrides):
    raw = copy.deepcopy(BASE_SPEC)
    for key, value in overrides.items():
        raw[key] = value
    parsed, problems = validate_spec(raw)
    assert not problems, problems
    return parsed


def _body(name="digits", namespace="ml", uid=UID):
    return {
        "apiVersion": "graft.dev/v1alpha1",
        "kind": "TransferJob",
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "labels": {"app.kubernetes.io/instance": "x"}},
    }


SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


NAME = builder.rayjob_name("digits", UID)
POD_LABELS = {
    "graft.dev/transferjob": "digits",
    "app.kubernetes.io/name": "graft",
    "app.kubernetes.io/component": "ray",
    "app.kubernetes.io/part-of": "graft",
    "app.kubernetes.io/managed-by": "graft-operator",
    "graft.dev/rayjob": NAME,
}


ENTRYPOINT = "python -m graft_trainer --job-env GRAFT_JOB"
#: Stands for the head's GRAFT_JOB value (the job's JSON, which each case's spec changes) in the expected objects;
#: `built` checks the real value on its own.
JOB = "<the job document>"
IMAGE = "ghcr.io/graft-dev/graft-trainer:0.1.0"
BASE_ENV = [{"name": "HOME", "value": "/tmp"}, {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"}]


def pod(container, cpu, memory, head, *, gpus=0, image=IMAGE, env=(), **placement):
    """The whole pod template the builder makes, with `env` after the base variables and `placement`
    (nodeSelector, tolerations, ...) added."""
    volumes = [{"name": "tmp", "emptyDir": {}}, {"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "dshm", "mountPath": "/dev/shm"}]
    amounts = {"cpu": cpu, "memory": memory, **({"nvidia.com/gpu": gpus} if gpus else {})}
    return {
        "metadata": {"labels": POD_LABELS},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": container,
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "resources": {"requests": amounts, "limits": amounts},
                "env": [*BASE_ENV, *env, *([{"name": "GRAFT_JOB", "value": JOB}] if head else [])],
                "volumeMounts": mounts,
                "securityContext": SECURITY,
            }],
            "volumes": volumes,
            **placement,
        },
    }


HEAD = pod("ray-head", "1", "2Gi", head=True)
WORKER = pod("ray-worker", "1", "4Gi", head=False)


def rayjob(*, head=HEAD, worker=WORKER, replicas=1, labels=(), **spec):
    """The whole RayJob the builder makes for `_body()`: these pods, `replicas` workers, `labels` added to its
    own, `spec` fields added or replaced."""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {
            "name": NAME,
            "namespace": "ml",
            "labels": {
                "graft.dev/transferjob": "digits",
                "app.kubernetes.io/name": "graft",
                "app.kubernetes.io/component": "rayjob",
                "app.kubernetes.io/part-of": "graft",
                "app.kubernetes.io/managed-by": "graft-operator",
                **dict(labels),
            },
            "ownerReferences": [{
                "apiVersion": "graft.dev/v1alpha1", "kind": "TransferJob", "name": "digits", "uid": UID,
                "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": {
            # whatever the spec, the entrypoint is this fixed string: no user value is ever interpolated into it
            "entrypoint": ENTRYPOINT,
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 0,
            "suspend": False,
            "backoffLimit": 3,
            "rayClusterSpec": {
                "rayVersion": "2.60.0",
                "headGroupSpec": {
                    "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                    "template": head,
                },
                "workerGroupSpecs": [{
                    "groupName": "workers", "replicas": replicas, "minReplicas": replicas, "maxReplicas": replicas,
                    "rayStartParams": {},
                    "template": worker,
                }],
            },
            **spec,
        },
    }


STORAGE = {"uri": "s3://bucket/jobs", "endpoint": "http://minio.storage:9000", "region": "eu-west-1",
           "credentialsSecret": {"name": "s3-creds", "accessKeyIdKey": "id", "secretAccessKeyKey": "key"}}
STORAGE_ENV = [
    {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "id"}}},
    {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "key"}}},
    {"name": "AWS_ENDPOINT_URL", "value": "http://minio.storage:9000"},
    {"name": "AWS_REGION", "value": "eu-west-1"},
]
GCS_ENV = [{"name": "STORAGE_EMULATOR_HOST", "value": "http://fake-gcs.storage:4443"}]
MLFLOW = {"trackingURI": "http://mlflow.mlflow:5000", "registeredModelName": "flowers",
          "credentialsSecret": {"name": "mlflow-creds", "tokenKey": "token"}}
# MLflow's own variables from the Secret, each key optional (basic auth, a token, or both); the URI stays in the spec.
MLFLOW_ENV = [
    {"name": "MLFLOW_TRACKING_USERNAME",
     "valueFrom": {"secretKeyRef": {"name": "mlflow-creds", "key": "MLFLOW_TRACKING_USERNAME", "optional": True}}},
    {"name": "MLFLOW_TRACKING_PASSWORD",
     "valueFrom": {"secretKeyRef": {"name": "mlflow-creds", "key": "MLFLOW_TRACKING_PASSWORD", "optional": True}}},
    {"name": "MLFLOW_TRACKING_TOKEN",
     "valueFrom": {"secretKeyRef": {"name": "mlflow-creds", "key": "token", "optional": True}}},
]
# weights: hub (or a timm:hf-hub: backbone): a private repository's token from the same Secret, optional.
HF_ENV = [{"name": "HF_TOKEN",
           "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "HF_TOKEN", "optional": True}}}]
DIGEST_IMAGE = "registry.local/graft-trainer@sha256:" + "a" * 64

CASES = [
    pytest.param({}, rayjob(), id="defaults-no-queue-label-no-selectors"),
    pytest.param(
        {"workers": {"replicas": 4, "gpus": 2, "cpus": "8", "memory": "64Gi"}},
        # requests == limits on the workers; the head runs only the driver: never a GPU
        rayjob(replicas=4, worker=pod("ray-worker", "8", "64Gi", head=False, gpus=2)),
        id="gpu-workers-requests-equal-limits",
    ),
    pytest.param(
        {"scheduling": {"queueName": "team-a"}},
        rayjob(labels={"kueue.x-k8s.io/queue-name": "team-a"}),
        id="kueue-queue-label",
    ),
    pytest.param(
        {"runPolicy": {"suspend": True, "activeDeadlineSeconds": 600, "backoffLimit": 0}},
        rayjob(suspend=True, activeDeadlineSeconds=600, backoffLimit=0),
        id="run-policy-pass-through",
    ),
    pytest.param(
        {"runPolicy": {"ttlSecondsAfterFinished": 60}},
        rayjob(ttlSecondsAfterFinished=60),
        id="ttl-keeps-the-cluster-up-through-kuberay",
    ),
    pytest.param(
        {"storage": STORAGE},
        rayjob(head=pod("ray-head", "1", "2Gi", head=True, env=STORAGE_ENV),
               worker=pod("ray-worker", "1", "4Gi", head=False, env=STORAGE_ENV)),
        id="credentials-only-by-secret-reference",
    ),
    pytest.param(
        # gs://: no keys from a Secret (Application Default Credentials); an endpoint is an emulator, reached as the
        # Google client libraries reach one, through STORAGE_EMULATOR_HOST; no AWS variable.
        {"storage": {"uri": "gs://bucket-a/jobs", "endpoint": "http://fake-gcs.storage:4443"}},
        rayjob(head=pod("ray-head", "1", "2Gi", head=True, env=GCS_ENV),
               worker=pod("ray-worker", "1", "4Gi", head=False, env=GCS_ENV)),
        id="gs-storage-emulator-endpoint-no-aws-variables",
    ),
    pytest.param(
        {"tracking": {"mlflow": MLFLOW}, "storage": STORAGE},
        rayjob(head=pod("ray-head", "1", "2Gi", head=True, env=MLFLOW_ENV + STORAGE_ENV),
               worker=pod("ray-worker", "1", "4Gi", head=False, env=MLFLOW_ENV + STORAGE_ENV)),
        id="mlflow-credentials-only-by-secret-reference",
    ),
    pytest.param(
        {"tracking": {"mlflow": {"trackingURI": "http://mlflow.mlflow:5000"}}},
        rayjob(),
        id="mlflow-without-secret-adds-nothing",
    ),
    pytest.param(
        {"storage": STORAGE, "model": {"backbone": "timm:convnext_tiny", "numClasses": 10, "weights": "hub"}},
        rayjob(head=pod("ray-head", "1", "2Gi", head=True, env=STORAGE_ENV[:2] + HF_ENV + STORAGE_ENV[2:]),
               worker=pod("ray-worker", "1", "4Gi", head=False, env=STORAGE_ENV[:2] + HF_ENV + STORAGE_ENV[2:])),
        id="hub-weights-token-only-by-secret-reference",
    ),
    pytest.param(
        {"storage": STORAGE, "model": {"backbone": "timm:convnext_tiny", "numClasses": 10,
                                       "weights": "s3://models/convnext.safetensors"}},
        rayjob(head=pod("ray-head", "1", "2Gi", head=True, env=STORAGE_ENV),
               worker=pod("ray-worker", "1", "4Gi", head=False, env=STORAGE_ENV)),
        id="timm-with-weights-file-needs-no-hub-token",
    ),
    pytest.param(
        {"image": DIGEST_IMAGE},
        rayjob(head=pod("ray-head", "1", "2Gi", head=True, image=DIGEST_IMAGE),
               worker=pod("ray-worker", "1", "4Gi", head=False, image=DIGEST_IMAGE)),
        id="image-on-every-pod",
    ),
]


def built(spec) -> dict:
    """The RayJob the builder makes for `_body()` and `spec`, its head's GRAFT_JOB checked against the job (the whole
    document, every default filled in, valid for the trainer) and replaced by `JOB`."""
    rayjob = builder.build_owned_rayjob(_body(), spec)
    env = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    carried = [v for v in env if v["name"] == "GRAFT_JOB"]
    assert len(carried) == 1
    doc = json.loads(carried[0]["value"])
    assert doc == {"apiVersion": "graft.dev/v1alpha1", "kind": "TransferJob",
                   "metadata": {"name": "digits", "namespace": "ml", "uid": UID},
                   "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True)}
    carried[0]["value"] = JOB
    return rayjob


@pytest.mark.parametrize(("overrides", "expected"), CASES)
def test_rayjob(overrides, expected):
    got = built(_spec(**overrides))
    assert got == expected, diff(expected, got)


GPU_SELECTOR = {"nvidia.com/gpu.product": "NVIDIA-H200"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
CPU_POOL = {"pool": "cpu"}
SPOT_TOLERATION = {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
GPU_WORKERS = {"replicas": 2, "gpus": 1, "cpus": "8", "memory": "32Gi"}

PLACEMENT_CASES = [
    pytest.param(
        {},
        pod("ray-head", "1", "2Gi", head=True),
        pod("ray-worker", "1", "4Gi", head=False),
        id="defaults-head-1cpu-2Gi-no-selectors",
    ),
    pytest.param(
        {"workers": GPU_WORKERS, "scheduling": {"nodeSelector": GPU_SELECTOR, "tolerations": [GPU_TOLERATION]}},
        # the head runs only the driver: it neither asks for a GPU nor is pinned to (or allowed onto) GPU nodes
        pod("ray-head", "1", "2Gi", head=True),
        pod("ray-worker", "8", "32Gi", head=False, gpus=1, nodeSelector=GPU_SELECTOR, tolerations=[GPU_TOLERATION]),
        id="worker-gpu-selectors-not-on-the-head",
    ),
    pytest.param(
        {"workers": GPU_WORKERS,
         "scheduling": {"nodeSelector": GPU_SELECTOR, "tolerations": [GPU_TOLERATION], "priorityClassName": "research",
                        "head": {"nodeSelector": CPU_POOL, "tolerations": [SPOT_TOLERATION], "cpus": "2",
                                 "memory": "8Gi"}}},
        pod("ray-head", "2", "8Gi", head=True, nodeSelector=CPU_POOL, tolerations=[SPOT_TOLERATION],
            priorityClassName="research"),
        pod("ray-worker", "8", "32Gi", head=False, gpus=1, nodeSelector=GPU_SELECTOR, tolerations=[GPU_TOLERATION],
            priorityClassName="research"),
        id="head-own-selectors-and-resources-priority-on-both",
    ),
    pytest.param(
        {"scheduling": {"head": {"cpus": "500m"}}},
        pod("ray-head", "500m", "2Gi", head=True),
        pod("ray-worker", "1", "4Gi", head=False),
        id="head-resources-only-memory-default-kept",
    ),
    pytest.param(
        {"scheduling": {"head": {"nodeSelector": CPU_POOL}}},
        pod("ray-head", "1", "2Gi", head=True, nodeSelector=CPU_POOL),
        pod("ray-worker", "1", "4Gi", head=False),
        id="head-selector-not-on-the-workers",
    ),
]


@pytest.mark.parametrize(("overrides", "head", "worker"), PLACEMENT_CASES)
def test_head_and_worker_pods_are_placed_apart(overrides, head, worker):
    rayjob = built(_spec(**overrides))
    cluster = rayjob["spec"]["rayClusterSpec"]
    got_head, got_worker = cluster["headGroupSpec"]["template"], cluster["workerGroupSpecs"][0]["template"]
    assert got_head == head, diff(head, got_head)
    assert got_worker == worker, diff(worker, got_worker)


@pytest.mark.parametrize(("overrides", "head", "worker"), PLACEMENT_CASES)
def test_rayjob_passes_kuberays_own_schema(overrides, head, worker):
    # What the API server does with a RayJob: KubeRay's real CRD (shared/kuberay) validates it and prunes what it
    # does not declare; nothing of what the builder writes may be dropped.
    from support import crdcheck, kuberay_crds
    from support.kube.schema import jsonschema_for

    rayjob = builder.build_owned_rayjob(_body(), _spec(**overrides))
    schema = kuberay_crds.crd("ray.io_rayjobs.yaml")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    errors = [e.message for e in jsonschema.Draft4Validator(jsonschema_for(schema)).iter_errors(rayjob)]
    assert errors == []
    assert crdcheck.prune(copy.deepcopy(rayjob), schema, root=True) == rayjob


NAME_CASES = [
    pytest.param("digits", "digits-", id="short-name-kept"),
    pytest.param("a" * 63, "a" * 38 + "-", id="longest-name-truncated"),
    pytest.param("x" * 37 + "-yyy", "x" * 37 + "-", id="no-double-dash-at-the-cut"),
]


@pytest.mark.parametrize(("name", "prefix"), NAME_CASES)
def test_rayjob_name_is_deterministic_and_fits_kuberay(name, prefix):
    child = builder.rayjob_name(name, UID)
    assert child == builder.rayjob_name(name, UID)
    assert child.startswith(prefix) and len(child) <= 47
    assert "--" not in child
    # KubeRay derives `<rayjob>-<5 chars>-head-svc`: it must stay a DNS label
    assert len(f"{child}-abcde-head-svc") <= 63


def test_a_recreated_job_of_the_same_name_gets_a_new_rayjob():
    assert builder.rayjob_name("digits", UID) != builder.rayjob_name("digits", "another-uid")


def test_the_head_carries_the_whole_job_and_the_trainer_accepts_it():
    rayjob = builder.build_owned_rayjob(_body(), _spec())
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    doc = json.loads(next(v["value"] for v in head["env"] if v["name"] == "GRAFT_JOB"))
    assert doc["metadata"] == {"name": "digits", "namespace": "ml", "uid": UID}
    job, problems = validate_document(doc)  # what `python -m graft_trainer --job-env GRAFT_JOB` validates with
    assert not problems and job is not None
    # defaults are pinned at creation time
    assert doc["spec"]["stages"][1]["sweep"]["lr"] == [0.003, 0.01, 0.03, 0.1]
    assert doc["spec"]["workers"]["replicas"] == 1
    workers = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert "GRAFT_JOB" not in {v["name"] for v in workers["env"]}  # only the driver, on the head, reads it


def test_owner_labels_are_not_copied_onto_the_rayjob():
    # a GitOps tracking label on the TransferJob must not make Argo CD claim (and prune) the RayJob
    rayjob = builder.build_owned_rayjob(_body(), _spec())
    assert "app.kubernetes.io/instance" not in rayjob["metadata"]["labels"]


VALIDATION_CASES = [
    pytest.param({k: v for k, v in BASE_SPEC.items() if k != "storage"}, "spec.storage", id="storage-required"),
    pytest.param({**BASE_SPEC, "stages": [{"type": "Head"}]}, "spec.stages", id="graft-validate-rule"),
    pytest.param({**BASE_SPEC, "workers": {"replicas": 0}}, "spec.workers.replicas", id="schema-rule"),
]


@pytest.mark.parametrize(("raw", "path"), VALIDATION_CASES)
def test_cluster_validation_names_the_field(raw, path):
    spec, problems = validate_for_cluster(copy.deepcopy(raw))
    assert spec is None
    assert any(p.path.startswith(path) for p in problems), problems


def test_cluster_validation_is_graft_validate_plus_storage():
    raw = {**BASE_SPEC, "stages": [{"type": "Head"}], "model": {"backbone": "nope", "numClasses": 1}}
    _, ours = validate_for_cluster(copy.deepcopy(raw))
    _, theirs = validate_spec(copy.deepcopy(raw))
    assert [str(p) for p in ours] == [str(p) for p in theirs]


def test_runpolicy_patch_follows_the_spec():
    spec = _spec(runPolicy={"suspend": True, "backoffLimit": 1})
    assert builder.runpolicy_patch(spec) == {
        "spec": {"suspend": True, "backoffLimit": 1, "activeDeadlineSeconds": None}
    }
