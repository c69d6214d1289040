"""The Helm chart, rendered by the real helm binary: what a platform team installs."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml
from support.crdcheck import check_crd, printer_column_problems

from graft.api.crd import build_crd
from graft_operator import rbac
from ship.chart import CHART, NAMESPACE, SCENARIOS, HelmFailed, find, helm, one, render

KUBERNETES = kubernetes_validate.latest_version()


def _values(name, tmp_path):
    return (SCENARIOS[name], tmp_path) if SCENARIOS[name] else (None, None)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_lint_strict(scenario, tmp_path):
    values, tmp = _values(scenario, tmp_path)
    out = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, values=values, tmp=tmp)
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_built_in_objects_pass_strict_validation(scenario, tmp_path):
    objects = render(*_values(scenario, tmp_path))
    checked = 0
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # not a built-in kind; its shape is checked in test_service_monitor_scrapes_the_service
        try:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} is invalid for Kubernetes {KUBERNETES}: {exc}")
        checked += 1
    assert checked >= 5


def test_default_install_is_cluster_wide():
    objects = render()
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == [
        "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Deployment", "Service", "ServiceAccount",
    ]
    assert one(objects, "ClusterRole")["rules"] == rbac.rules(namespaced=False)
    binding = one(objects, "ClusterRoleBinding")
    sa = one(objects, "ServiceAccount")
    role_name = one(objects, "ClusterRole")["metadata"]["name"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    args = pod["containers"][0]["args"]
    assert "--all-namespaces" in args
    assert not [a for a in args if a.startswith("--namespace")]


def test_rendered_crd_equals_generated_one(tmp_path):
    crd = one(render(), "CustomResourceDefinition")
    assert crd["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
    assert crd == build_crd()

    unkept = one(render({"crds": {"keep": False}}, tmp_path), "CustomResourceDefinition")
    assert unkept == build_crd()


@pytest.mark.parametrize("values", [{}, {"crds": {"keep": False}}], ids=["keep", "no-keep"])
def test_rendered_crd_is_one_a_real_api_server_accepts(values, tmp_path):
    """`helm install` must not be left half-done by a CRD the API server refuses (a v1.32 server refused the
    chart's CRD for a description on the root metadata schema): the CRD exactly as helm renders it passes the
    server's own rules (support/crdcheck.py), annotation included."""
    crd = one(render(values or None, tmp_path if values else None), "CustomResourceDefinition")
    assert [str(e) for e in check_crd(crd)] == []
    assert printer_column_problems(crd) == []


def test_crds_off_renders_no_crd(tmp_path):
    objects = render({"crds": {"enabled": False}}, tmp_path)
    assert not find(objects, "CustomResourceDefinition")
    assert find(objects, "Deployment")


def test_namespaced_mode_grants_only_roles_in_watched_namespaces(tmp_path):
    objects = render({"watchNamespaces": ["ml", "research"]}, tmp_path)
    assert not find(objects, "ClusterRole") and not find(objects, "ClusterRoleBinding")
    roles = find(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml", "research"]
    for role in roles:
        assert role["rules"] == rbac.rules(namespaced=True)
    bindings = find(objects, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["ml", "research"]
    sa = one(objects, "ServiceAccount")["metadata"]
    for b in bindings:
        assert b["roleRef"]["kind"] == "Role"
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa["name"], "namespace": NAMESPACE}]
    args = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=ml", "--namespace=research"]
    assert "--all-namespaces" not in args


def test_operator_deployment_is_locked_down():
    deployment = one(render(), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["image"] == "ghcr.io/graft-dev/graft-operator:" + yaml.safe_load(
        (CHART / "Chart.yaml").read_text())["appVersion"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "healthz": 8081}
    assert "--metrics-port=8080" in container["args"] and "--liveness-port=8081" in container["args"]
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and ports[probe["port"]] == 8081
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # The read-only root filesystem leaves /tmp as the only writable path, backed by an emptyDir.
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == "/tmp"  # noqa: S108 (the container's scratch mount, not a temp file)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert "emptyDir" in volume


def test_ports_follow_values(tmp_path):
    objects = render({"metrics": {"port": 9090}, "livenessProbe": {"port": 9091}}, tmp_path)
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "--metrics-port=9090" in container["args"] and "--liveness-port=9091" in container["args"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": 9090, "healthz": 9091}
    assert one(objects, "Service")["spec"]["ports"][0]["port"] == 9090


def _operator_args(values=None, tmp_path=None):
    return one(render(values, tmp_path), "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]


def test_pod_security_exceptions_reach_the_operator_as_its_allow_flag(tmp_path):
    from graft.api.podsecurity import EXCEPTIONS, parse_allow

    assert not [a for a in _operator_args() if a.startswith("--allow")]  # the default: none allowed
    args = _operator_args({"podSecurity": {"allow": ["hostPath", "privileged"]}}, tmp_path)
    (flag,) = [a for a in args if a.startswith("--allow")]
    assert parse_allow([flag.removeprefix("--allow=")]) == {"hostPath", "privileged"}  # what `graft operator` reads
    # The schema's names are the operator's: a name it does not know fails `helm install`, not the operator pod.
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["podSecurity"]["properties"]["allow"]["items"]["enum"] == list(EXCEPTIONS)


def test_the_trainer_image_reaches_the_operator_as_its_flag_and_is_checked_as_spec_image_is(tmp_path):
    from graft.api.models import image_problem

    assert not [a for a in _operator_args() if a.startswith("--trainer-image")]  # the default: the released image
    mirror = "registry.internal:5000/ml/graft-trainer@sha256:" + "a" * 64
    (flag,) = [a for a in _operator_args({"trainerImage": mirror}, tmp_path) if a.startswith("--trainer-image")]
    assert flag == f"--trainer-image={mirror}" and image_problem(mirror) is None  # one argv element, no shell


def test_metrics_service_selects_the_operator_pod():
    objects = render()
    service = one(objects, "Service")
    template = one(objects, "Deployment")["spec"]["template"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    port_names = {p["name"] for p in template["spec"]["containers"][0]["ports"]}
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["metrics"]
    assert "metrics" in port_names


def test_service_monitor_scrapes_the_service(tmp_path):
    assert not find(render(), "ServiceMonitor")
    objects = render(SCENARIOS["servicemonitor"], tmp_path)
    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


def test_service_monitor_without_service_is_refused(tmp_path):
    values = {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}}
    with pytest.raises(HelmFailed, match=r"needs metrics\.service\.enabled"):
        render(values, tmp_path)


BAD_VALUES = {
    "namespace-not-a-dns-label": ({"watchNamespaces": ["ML_Team"]}, "/watchNamespaces/0"),
    "typo-in-crds": ({"crds": {"enabeld": False}}, "additional properties 'enabeld' not allowed"),
    "no-replica-count": ({"replicaCount": 2}, "additional properties 'replicaCount' not allowed"),
    "port-out-of-range": ({"metrics": {"port": 70000}}, "/metrics/port"),
    "pull-policy": ({"image": {"pullPolicy": "Sometimes"}}, "'Always', 'IfNotPresent', 'Never'"),
    "keep-not-boolean": ({"crds": {"keep": "yes"}}, "/crds/keep"),
    "bad-quantity": ({"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory"),
    "bad-interval": ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "/metrics/serviceMonitor/interval"),
    "unknown-pod-security-exception": ({"podSecurity": {"allow": ["hostpath"]}}, "/podSecurity/allow/0"),
    "trainer-image-with-space": ({"trainerImage": "graft trainer:1"}, "/trainerImage"),
}


@pytest.mark.parametrize(("values", "message"), list(BAD_VALUES.values()), ids=list(BAD_VALUES))
def test_bad_values_are_rejected_by_the_schema(values, message, tmp_path):
    with pytest.raises(HelmFailed) as failed:
        render(values, tmp_path)
    assert "values don't meet the specifications of the schema" in str(failed.value)
    assert message in str(failed.value)


def test_existing_service_account_needs_a_name(tmp_path):
    with pytest.raises(HelmFailed, match=r"serviceAccount\.name is required"):
        render({"serviceAccount": {"create": False}}, tmp_path)
    objects = render({"serviceAccount": {"create": False, "name": "platform-graft"}}, tmp_path)
    assert not find(objects, "ServiceAccount")
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "platform-graft"
    assert one(objects, "ClusterRoleBinding")["subjects"][0]["name"] == "platform-graft"


def test_every_value_is_documented_and_in_the_schema():
    """values.yaml documents each leaf with a comment, and the schema declares every key it has."""
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node, sch, path):
        assert sch.get("type") == "object", f"{path}: schema is not an object"
        for key, value in node.items():
            assert key in sch.get("properties", {}), f"{path}.{key} is in values.yaml but not in values.schema.json"
            sub = sch["properties"][key]
            if isinstance(value, dict) and value and sub.get("additionalProperties") is False:
                walk(value, sub, f"{path}.{key}")

    walk(values, schema, "values")
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith(("#", " ")) and ":" in line:
            key = line.split(":")[0]
            before = lines[i - 1].strip() if i else ""
            nested = i + 1 < len(lines) and lines[i + 1].startswith("  ")
            assert before.startswith("#") or nested, f"top-level value {key!r} has no comment"


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_install_notes_render(scenario, tmp_path):
    """NOTES.txt is rendered only on install: a broken one fails `helm install`, not `helm template`."""
    values, tmp = _values(scenario, tmp_path)
    out = helm("install", "graft", str(CHART), "--dry-run=client", "--namespace", NAMESPACE, values=values, tmp=tmp)
    notes = out.split("NOTES:", 1)[1]
    assert f"kubectl -n {NAMESPACE} rollout status deployment/graft" in notes
    assert "kubectl wait tj/<name> --for=condition=Succeeded" in notes
    namespaces = (values or {}).get("watchNamespaces")
    if namespaces:
        assert f"serves TransferJobs in: {', '.join(namespaces)}" in notes
    else:
        assert "serves TransferJobs in all namespaces" in notes
