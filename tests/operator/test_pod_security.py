"""Pod security exceptions of `spec.pod` (privileged, privilege escalation, capabilities, host namespaces, hostPath,
root): refused by default with the field path, as the operator refuses them; accepted when the operator allows each
(`--allow`, the chart's podSecurity.allow), and then present on the head and the workers, unpruned by KubeRay's CRD."""

from __future__ import annotations

import copy

import pytest
from support import crdcheck, kuberay_crds

from graft.api.podsecurity import EXCEPTIONS
from graft.api.validation import validate_for_cluster
from graft_operator import builder

BASE_SPEC = {
    "model": {"backbone": "smallcnn", "numClasses": 10, "weights": "s3://models/smallcnn.pt"},
    "data": {"train": "s3://datasets/digits/train", "imageSize": 8},
    "stages": [{"type": "FrozenFeatures"}, {"type": "Head", "epochs": 5}],
    "storage": {"uri": "s3://bucket/jobs"},
}
BODY = {"apiVersion": "graft.dev/v1alpha1", "kind": "TransferJob",
        "metadata": {"name": "digits", "namespace": "ml", "uid": "5c1f7a0e-1d2b-4c3d-9e8f-0a1b2c3d4e5f"}}

#: exception -> (spec.pod asking for it, the refused field, what the pod template then holds: (where, key, value)).
#: `where` is "pod" (the pod spec), "podSecurityContext" (its securityContext) or "container" (the Graft container's
#: securityContext, which wins over the pod's).
CASES = {
    "privileged": ({"containerSecurityContext": {"privileged": True}},
                   "spec.pod.containerSecurityContext.privileged",
                   [("container", "privileged", True), ("container", "allowPrivilegeEscalation", True)]),
    "allowPrivilegeEscalation": ({"containerSecurityContext": {"allowPrivilegeEscalation": True}},
                                 "spec.pod.containerSecurityContext.allowPrivilegeEscalation",
                                 [("container", "allowPrivilegeEscalation", True)]),
    "capabilities": ({"containerSecurityContext": {"capabilities": {"add": ["NET_ADMIN"]}}},
                     "spec.pod.containerSecurityContext.capabilities.add",
                     [("container", "capabilities", {"drop": ["ALL"], "add": ["NET_ADMIN"]})]),
    "hostNetwork": ({"hostNetwork": True}, "spec.pod.hostNetwork", [("pod", "hostNetwork", True)]),
    "hostPID": ({"hostPID": True}, "spec.pod.hostPID", [("pod", "hostPID", True)]),
    "hostIPC": ({"hostIPC": True}, "spec.pod.hostIPC", [("pod", "hostIPC", True)]),
    "hostPath": ({"volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "nvme", "hostPath": {"path": "/mnt/nvme"}}],
                  "volumeMounts": [{"name": "nvme", "mountPath": "/nvme"}]},
                 "spec.pod.volumes[1].hostPath", [("pod", "volumes", None)]),
    "runAsRoot": ({"securityContext": {"runAsUser": 0, "runAsNonRoot": False}},
                  "spec.pod.securityContext.runAsUser",
                  [("podSecurityContext", "runAsUser", 0), ("container", "runAsUser", 0),
                   ("container", "runAsNonRoot", False)]),
}


def _spec(pod):
    return {**copy.deepcopy(BASE_SPEC), "pod": copy.deepcopy(pod)}


def test_every_exception_has_a_case():
    assert set(CASES) == set(EXCEPTIONS)


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_refused_by_default_with_the_field_path_and_why(name):
    pod, path, _ = CASES[name]
    parsed, problems = validate_for_cluster(_spec(pod))
    assert parsed is None
    lines = [str(p) for p in problems]
    assert any(line.startswith(f"{path}: ") and f"allows {name!r}" in line for line in lines), lines


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_allowing_every_other_exception_still_refuses_it(name):
    pod, path, _ = CASES[name]
    _, problems = validate_for_cluster(_spec(pod), allow=set(EXCEPTIONS) - {name})
    assert path in [p.path for p in problems]


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_allowed_it_reaches_head_and_workers_unpruned_by_kuberay(name):
    pod, _, expected = CASES[name]
    parsed, problems = validate_for_cluster(_spec(pod), allow={name})
    assert problems == []
    rayjob = builder.build_owned_rayjob(BODY, parsed)
    schema = kuberay_crds.crd("ray.io_rayjobs.yaml")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert crdcheck.prune(copy.deepcopy(rayjob), schema, root=True) == rayjob
    cluster = rayjob["spec"]["rayClusterSpec"]
    for template in (cluster["headGroupSpec"]["template"], cluster["workerGroupSpecs"][0]["template"]):
        pod_spec = template["spec"]
        container = pod_spec["containers"][0]["securityContext"]
        for where, key, value in expected:
            if key == "volumes":
                assert {"name": "nvme", "hostPath": {"path": "/mnt/nvme"}} in pod_spec["volumes"]
                continue
            holder = {"pod": pod_spec, "podSecurityContext": pod_spec["securityContext"], "container": container}
            assert holder[where][key] == value, (where, key)
        # What the exception does not name stays restricted.
        assert container["readOnlyRootFilesystem"] is True
        assert container["seccompProfile"] == {"type": "RuntimeDefault"}
        assert "ALL" in container["capabilities"]["drop"]


def test_without_exceptions_the_pods_keep_the_restricted_defaults():
    parsed, _ = validate_for_cluster(_spec({}))
    template = builder.build_owned_rayjob(BODY, parsed)["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    assert template["spec"]["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert template["spec"]["containers"][0]["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 1000, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    assert not {"hostNetwork", "hostPID", "hostIPC"} & set(template["spec"])


def test_a_non_root_user_needs_no_exception():
    parsed, problems = validate_for_cluster(_spec({"securityContext": {"runAsUser": 2000}}))
    assert problems == []
    container = builder.build_owned_rayjob(BODY, parsed)["spec"]["rayClusterSpec"]["headGroupSpec"]["template"][
        "spec"]["containers"][0]
    assert (container["securityContext"]["runAsUser"], container["securityContext"]["runAsNonRoot"]) == (2000, True)


def test_sys_admin_makes_escalation_true_which_the_api_server_requires():
    # kubernetes pkg/apis/core/validation/validation.go (ValidateSecurityContext): allowPrivilegeEscalation false
    # beside an added CAP_SYS_ADMIN is invalid.
    parsed, problems = validate_for_cluster(_spec({"containerSecurityContext": {"capabilities": {
        "add": ["CAP_SYS_ADMIN"]}}}), allow={"capabilities"})
    assert problems == []
    sc = builder.build_owned_rayjob(BODY, parsed)["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"][
        "containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is True


@pytest.mark.parametrize("command", ["validate", "render", "operator"])
def test_an_unknown_exception_name_is_one_clear_error_before_anything_runs(command, tmp_path):
    from typer.testing import CliRunner

    from graft.cli import app

    job = tmp_path / "job.yaml"
    job.write_text("{}")
    args = [command, "--allow", "hostPath,hostpath"] + ([str(job)] if command != "operator" else [])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "unknown pod security exception 'hostpath'" in result.output
    assert "hostPath" in result.output.split("allowed:", 1)[1]


def test_graft_validate_allow_takes_repeated_and_comma_separated_names(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from graft.cli import app

    job = tmp_path / "job.yaml"
    pod = {**CASES["hostPath"][0], "hostNetwork": True}
    job.write_text(yaml.safe_dump({**{k: v for k, v in BODY.items() if k != "metadata"},
                                   "metadata": {"name": "digits"}, "spec": _spec(pod)}))
    refused = CliRunner().invoke(app, ["validate", "--allow", "hostPath", str(job)])
    assert refused.exit_code == 1 and "spec.pod.hostNetwork: " in refused.output, refused.output
    for allow in (["--allow", "hostPath,hostNetwork"], ["--allow", "hostPath", "--allow", "hostNetwork"]):
        result = CliRunner().invoke(app, ["validate", *allow, str(job)])
        assert result.exit_code == 0, result.output


def test_every_exception_survives_the_transferjob_crd_unpruned():
    # The API server prunes what the CRD does not declare: a field spelt differently there (hostPid for hostPID)
    # would vanish from the stored job, and the operator would never see it to refuse or allow.
    from graft.api.crd import build_crd

    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    pod: dict = {}
    for case_pod, _, _ in CASES.values():
        for key, value in case_pod.items():
            pod[key] = {**pod[key], **value} if isinstance(value, dict) and key in pod else value
    job = {**{k: v for k, v in BODY.items() if k != "metadata"}, "metadata": {"name": "digits"}, "spec": _spec(pod)}
    assert crdcheck.prune(copy.deepcopy(job), schema, root=True) == job
    assert len(validate_for_cluster(job["spec"])[1]) == len(EXCEPTIONS) + 1  # runAsRoot names two fields


def test_the_mirror_loop_follows_a_job_whatever_exceptions_it_uses():
    # The operator's policy gates the RayJob's creation (lifecycle.allowed); once it exists the job is followed, or
    # an allowed hostPath job's status would never move past its creation.
    from graft_operator.jobstate import Follower

    every = {key: value for case_pod, _, _ in CASES.values() for key, value in case_pod.items()
             if key not in ("volumes", "volumeMounts")}
    for pod in (CASES["hostPath"][0], every):
        body = {**BODY, "metadata": {**BODY["metadata"], "generation": 1}, "spec": _spec(pod)}
        assert Follower().valid_spec(body) is not None
