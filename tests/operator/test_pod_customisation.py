"""`spec.pod`: what a cluster needs of the Ray pods (identity, registries, volumes, environment, metadata,
affinity, security additions) reaches both the head and the workers, survives KubeRay's real RayJob schema
unpruned, and cannot override what Graft owns."""

# ruff: noqa: S108 (a refused mount at /tmp)
from __future__ import annotations

import copy

import jsonschema
import pytest

from graft.api.validation import cluster_warnings, validate_spec
from graft_operator import builder

BASE_SPEC = {
    "model": {"backbone": "smallcnn", "numClasses": 10, "weights": "s3://models/smallcnn.pt"},
    "data": {"train": "/data/digits/train", "imageSize": 8},
    "stages": [{"type": "FrozenFeatures"}, {"type": "Head", "epochs": 5}],
    "storage": {"uri": "s3://bucket/jobs"},
}
BODY = {"apiVersion": "graft.dev/v1alpha1", "kind": "TransferJob",
        "metadata": {"name": "digits", "namespace": "ml", "uid": "5c1f7a0e-1d2b-4c3d-9e8f-0a1b2c3d4e5f"}}

#: A team's usual needs: IRSA, a private registry, a dataset PVC, a config map, a cost label, a mesh annotation,
#: zone affinity and a volume group.
POD = {
    "serviceAccountName": "graft-trainer",
    "imagePullSecrets": [{"name": "registry-creds"}],
    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "digits", "readOnly": True}}],
    "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}],
    "env": [{"name": "TORCH_HOME", "value": "/data/torch"},
            {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "key"}}}],
    "envFrom": [{"configMapRef": {"name": "proxy-settings"}}],
    "labels": {"cost-centre": "ml-research"},
    "annotations": {"sidecar.istio.io/inject": "false"},
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["eu-west-1a"]}]}]}}},
    "securityContext": {"fsGroup": 1000, "supplementalGroups": [2000]},
}


def _rayjob(pod):
    raw = {**copy.deepcopy(BASE_SPEC), "pod": pod}
    parsed, problems = validate_spec(raw)
    assert not problems, problems
    return builder.build_owned_rayjob(BODY, parsed)


def _templates(rayjob):
    cluster = rayjob["spec"]["rayClusterSpec"]
    return {"head": cluster["headGroupSpec"]["template"], "worker": cluster["workerGroupSpecs"][0]["template"]}


@pytest.mark.parametrize("role", ["head", "worker"])
def test_every_pass_through_reaches_the_pod_beside_graft_own(role):
    template = _templates(_rayjob(POD))[role]
    spec, container = template["spec"], template["spec"]["containers"][0]
    assert spec["serviceAccountName"] == "graft-trainer"
    assert spec["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert [v["name"] for v in spec["volumes"]] == ["tmp", "dshm", "data"]
    assert container["volumeMounts"][-1] == {"name": "data", "mountPath": "/data", "readOnly": True}
    assert [e["name"] for e in container["env"]][-2:] == ["TORCH_HOME", "WANDB_API_KEY"]
    assert container["envFrom"] == [{"configMapRef": {"name": "proxy-settings"}}]
    assert template["metadata"]["labels"]["cost-centre"] == "ml-research"
    assert template["metadata"]["labels"]["graft.dev/transferjob"] == "digits"
    assert template["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    assert spec["affinity"] == POD["affinity"]
    # Graft's own security settings stay; the cluster's additions join them.
    assert spec["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"},
                                       "fsGroup": 1000, "supplementalGroups": [2000]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


#: IRSA wired by hand, as EKS's pod identity webhook would inject it (aws/amazon-eks-pod-identity-webhook README:
#: a projected service-account token with audience sts.amazonaws.com, AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE),
#: for clusters without the webhook; with it, `serviceAccountName` alone does the same.
IRSA_BY_HAND = {
    "serviceAccountName": "graft-trainer",
    "volumes": [{"name": "aws-iam-token", "projected": {"sources": [{"serviceAccountToken": {
        "audience": "sts.amazonaws.com", "expirationSeconds": 86400, "path": "token"}}]}}],
    "volumeMounts": [{"name": "aws-iam-token", "mountPath": "/var/run/secrets/eks.amazonaws.com/serviceaccount",
                      "readOnly": True}],
    "env": [{"name": "AWS_ROLE_ARN", "value": "arn:aws:iam::123456789012:role/graft-trainer"},
            {"name": "AWS_WEB_IDENTITY_TOKEN_FILE",
             "value": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"}],
}


def test_web_identity_wiring_reaches_every_pod_with_no_keys_and_survives_kuberays_schema():
    from support import crdcheck, kuberay_crds

    rayjob = _rayjob(IRSA_BY_HAND)
    schema = kuberay_crds.crd("ray.io_rayjobs.yaml")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert crdcheck.prune(copy.deepcopy(rayjob), schema, root=True) == rayjob
    for role, template in _templates(rayjob).items():
        env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0]["env"]}
        assert env["AWS_WEB_IDENTITY_TOKEN_FILE"].endswith("/token"), role
        assert "AWS_ACCESS_KEY_ID" not in env and "AWS_SECRET_ACCESS_KEY" not in env, role
        assert template["spec"]["serviceAccountName"] == "graft-trainer"


def test_a_spec_without_pod_builds_the_same_pods_as_before():
    assert _rayjob({}) == builder.build_owned_rayjob(BODY, validate_spec(copy.deepcopy(BASE_SPEC))[0])


def test_the_customised_rayjob_passes_kuberays_own_schema_with_nothing_pruned():
    # KubeRay's real CRD (shared/kuberay): the API server validates the RayJob with it and prunes what it does not
    # declare, so a pass-through field it dropped would silently not apply.
    from support import crdcheck, kuberay_crds
    from support.kube.schema import jsonschema_for

    rayjob = _rayjob(POD)
    schema = kuberay_crds.crd("ray.io_rayjobs.yaml")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert [e.message for e in jsonschema.Draft4Validator(jsonschema_for(schema)).iter_errors(rayjob)] == []
    assert crdcheck.prune(copy.deepcopy(rayjob), schema, root=True) == rayjob


REFUSED = {
    "storage-key-env": ({"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]},
                        "spec.pod.env[0].name", "spec.storage.credentialsSecret"),
    "job-document-env": ({"env": [{"name": "GRAFT_JOB", "value": "{}"}]}, "spec.pod.env[0].name", "GRAFT_JOB"),
    "inline-token": ({"env": [{"name": "WANDB_API_KEY", "value": "abc"}]}, "spec.pod.env[0].value",
                     "valueFrom.secretKeyRef"),
    "graft-label": ({"labels": {"graft.dev/transferjob": "other"}}, "spec.pod.labels", "Graft's or Ray's own"),
    "tmp-mount": ({"volumes": [{"name": "scratch", "emptyDir": {}}],
                   "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}]},
                  "spec.pod.volumeMounts[0].mountPath", "Graft's own mounts"),
    "graft-volume-name": ({"volumes": [{"name": "dshm", "emptyDir": {}}]}, "spec.pod.volumes[0].name", "taken"),
    "mount-of-no-volume": ({"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                           "spec.pod.volumeMounts[0].name", "no volume 'data'"),
    "two-volume-sources": ({"volumes": [{"name": "data", "emptyDir": {}, "nfs": {"server": "s", "path": "/"}}]},
                           "spec.pod.volumes[0]", "exactly one volume source"),
    "root-without-run-as-non-root-false": ({"securityContext": {"runAsUser": 0}}, "spec.pod.securityContext.runAsUser",
                                           "also set runAsNonRoot: false"),
    "container-field-at-pod-level": ({"securityContext": {"privileged": True}}, "spec.pod.securityContext.privileged",
                                     "set it in spec.pod.containerSecurityContext"),
    "read-only-root": ({"containerSecurityContext": {"readOnlyRootFilesystem": False}},
                       "spec.pod.containerSecurityContext.readOnlyRootFilesystem", "set by Graft"),
    "capability-drop": ({"containerSecurityContext": {"capabilities": {"drop": []}}},
                        "spec.pod.containerSecurityContext.capabilities.drop", "unknown field"),
    "pod-command": ({"command": ["sh"]}, "spec.pod.command", "the trainer's entrypoint"),
    "resources": ({"resources": {"limits": {"cpu": "64"}}}, "spec.pod.resources", "spec.workers"),
}


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_what_graft_owns_is_refused_with_the_field_and_why(case):
    pod, path, why = REFUSED[case]
    _, problems = validate_spec({**copy.deepcopy(BASE_SPEC), "pod": pod})
    lines = [str(p) for p in problems]
    assert any(line.startswith(path) and why in line for line in lines), lines


def test_data_on_a_mounted_volume_is_read_there_without_a_warning():
    mounted = validate_spec({**copy.deepcopy(BASE_SPEC), "pod": POD})[0]
    assert [p.path for p in cluster_warnings(mounted)] == []
    unmounted = {**POD, "volumeMounts": [{"name": "data", "mountPath": "/mnt/other"}]}
    parsed = validate_spec({**copy.deepcopy(BASE_SPEC), "pod": unmounted})[0]
    assert [p.path for p in cluster_warnings(parsed)] == ["spec.data.train"]


def test_graft_render_shows_the_dataset_mount_on_head_and_workers_with_no_warning(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from graft.cli import app

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**BODY, "spec": {**copy.deepcopy(BASE_SPEC), "pod": POD}}))
    result = CliRunner().invoke(app, ["render", str(job)])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr
    (rayjob,) = yaml.safe_load_all(result.stdout)
    for role, template in _templates(rayjob).items():
        mounts = template["spec"]["containers"][0]["volumeMounts"]
        assert {"name": "data", "mountPath": "/data", "readOnly": True} in mounts, role
