"""The emulated API server behaves like kube-apiserver where the operator and its tests rely on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import kubernetes
import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from support.committed import COMMITTED_CRD
from support.crdcheck import kubectl_message
from support.kube import emulated_api, label_selector_matches

NS = "emu"
G, V, P = "graft.dev", "v1alpha1", "transferjobs"


def transferjob(name: str, **spec_overrides) -> dict:
    spec = {
        "model": {"backbone": "smallcnn", "numClasses": 10},
        "data": {"train": "builtin:digits", "imageSize": 8},
        "stages": [{"type": "FrozenFeatures"}, {"type": "Head", "epochs": 2}],
        "storage": {"uri": "file:///tmp/graft-emulator-test"},
    }
    spec.update(spec_overrides)
    return {"apiVersion": f"{G}/{V}", "kind": "TransferJob", "metadata": {"name": name}, "spec": spec}


@pytest.fixture(scope="module")
def api():
    with emulated_api(namespaces=[NS]) as api:
        api.apply_crd(COMMITTED_CRD)
        yield api


@pytest.fixture()
def client(api):
    with api.client() as c:
        yield c


def test_create_answers_201_with_the_filled_in_object(api, client):
    core = kubernetes.client.CoreV1Api(client)
    cm, status, _ = core.create_namespaced_config_map_with_http_info(NS, {"metadata": {"generateName": "cm-"}})
    assert status == 201
    assert cm.metadata.name.startswith("cm-") and len(cm.metadata.name) == len("cm-") + 5
    assert cm.metadata.namespace == NS  # from the URL
    assert cm.metadata.uid and cm.metadata.resource_version and cm.metadata.creation_timestamp
    with pytest.raises(ApiException) as e:
        core.create_namespaced_config_map(NS, {"metadata": {"name": cm.metadata.name}})
    assert e.value.status == 409
    with pytest.raises(ApiException) as e:
        core.create_namespaced_config_map("no-such-namespace", {"metadata": {"name": "x"}})
    assert e.value.status == 404
    assert [n.metadata.name for n in core.list_namespace().items] == ["default", NS]


def test_crd_applied_through_the_api_is_discovered_with_its_status_subresource(api, client):
    resources = kubernetes.client.CustomObjectsApi(client).get_api_resources(G, V).resources
    names = {r.name: r for r in resources}
    assert set(names) == {"transferjobs", "transferjobs/status"}
    assert names["transferjobs"].kind == "TransferJob" and names["transferjobs"].namespaced
    core_names = {r.name for r in kubernetes.client.CoreV1Api(client).get_api_resources().resources}
    assert {"namespaces", "events", "configmaps", "secrets"} <= core_names
    groups = {g.name for g in kubernetes.client.ApisApi(client).get_api_versions().groups}
    assert {"graft.dev", "ray.io", "apiextensions.k8s.io", "events.k8s.io"} <= groups


def test_schema_validation_rejects_bad_specs_and_prunes_unknown_fields(client):
    co = kubernetes.client.CustomObjectsApi(client)
    bad = transferjob("bad", model={"backbone": "smallcnn", "numClasses": 1})
    with pytest.raises(ApiException) as e:
        co.create_namespaced_custom_object(G, V, NS, P, bad)
    assert e.value.status == 422
    assert "spec.model.numClasses" in json.loads(e.value.body)["message"]
    cel = transferjob("cel", stages=[{"type": "Pretrain", "epochs": 1}, {"type": "Head", "epochs": 1}])
    with pytest.raises(ApiException) as e:
        co.create_namespaced_custom_object(G, V, NS, P, cel)
    assert e.value.status == 422 and "Pretrain needs data" in json.loads(e.value.body)["message"]
    extra = transferjob("pruned")
    extra["spec"]["model"]["colour"] = "blue"
    extra["status"] = {"phase": "Succeeded"}
    created = co.create_namespaced_custom_object(G, V, NS, P, extra)
    assert "colour" not in created["spec"]["model"]
    assert "status" not in created  # the status subresource owns it


def test_status_subresource_and_generation(client):
    co = kubernetes.client.CustomObjectsApi(client)
    tj = co.create_namespaced_custom_object(G, V, NS, P, transferjob("gen"))
    assert tj["metadata"]["generation"] == 1
    # Status writes go only through /status and never bump the generation.
    s = co.patch_namespaced_custom_object_status(G, V, NS, P, "gen", {"status": {"phase": "Running"},
                                                                      "spec": {"image": "ignored"}})
    assert s["status"]["phase"] == "Running" and "image" not in s["spec"] and s["metadata"]["generation"] == 1
    # Main-resource patches never touch status; spec changes bump the generation, metadata ones do not.
    m = co.patch_namespaced_custom_object(G, V, NS, P, "gen", {"status": {"phase": "Failed"},
                                                               "metadata": {"labels": {"a": "b"}}})
    assert m["status"]["phase"] == "Running" and m["metadata"]["generation"] == 1
    m = co.patch_namespaced_custom_object(G, V, NS, P, "gen", {"spec": {"image": "graft:2"}})
    assert m["metadata"]["generation"] == 2 and m["status"]["phase"] == "Running"
    # A no-op write leaves the resourceVersion alone.
    again = co.patch_namespaced_custom_object(G, V, NS, P, "gen", {"spec": {"image": "graft:2"}})
    assert again["metadata"]["resourceVersion"] == m["metadata"]["resourceVersion"]
    # PUT works, and a stale resourceVersion is a conflict.
    m["spec"]["image"] = "graft:3"
    put = co.replace_namespaced_custom_object(G, V, NS, P, "gen", m)
    assert put["spec"]["image"] == "graft:3" and put["metadata"]["generation"] == 3
    with pytest.raises(ApiException) as e:
        co.replace_namespaced_custom_object(G, V, NS, P, "gen", m)
    assert e.value.status == 409
    # Invalid status is refused like an invalid spec.
    with pytest.raises(ApiException) as e:
        co.patch_namespaced_custom_object_status(G, V, NS, P, "gen", {"status": {"phase": "Exploded"}})
    assert e.value.status == 422


def test_strategic_merge_patch_is_refused_on_custom_resources(api, client):
    import urllib.request

    kubernetes.client.CustomObjectsApi(client).create_namespaced_custom_object(G, V, NS, P, transferjob("smp"))
    req = urllib.request.Request(  # noqa: S310 (loopback)
        f"{api.url}/apis/{G}/{V}/namespaces/{NS}/{P}/smp", method="PATCH", data=b"{}",
        headers={"Content-Type": "application/strategic-merge-patch+json", "Authorization": "Bearer admin"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)  # noqa: S310 (loopback)
    assert e.value.code == 415


def _raw(api, method: str, path: str, body=None, content_type: str = "application/json") -> tuple[int, dict]:
    """One request as it goes over the wire: (status, decoded body), without the client's typed models."""
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{api.url}{path}", method=method, data=data,  # noqa: S310 (loopback)
                                 headers={"Content-Type": content_type, "Authorization": "Bearer admin"})
    try:
        with urllib.request.urlopen(req) as response:  # noqa: S310 (loopback)
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


#: A failed JSON patch as the real server answers it (apiserver/pkg/endpoints/handlers/patch.go applyJSPatch:
#: NewGenericServerResponse(422, ...) keeps apimachinery's generic message, not the patch library's).
UNPROCESSABLE = (422, "Invalid", "the server rejected our request due to an error in our request")


@pytest.mark.parametrize(
    ("ops", "expected"),
    [
        ([{"op": "test", "path": "/data/k", "value": "v"}, {"op": "replace", "path": "/data/k", "value": "w"},
          {"op": "add", "path": "/data/n", "value": "1"}, {"op": "copy", "from": "/data/n", "path": "/data/m"},
          {"op": "remove", "path": "/data/n"}],
         (200, {"k": "w", "m": "1"})),
        ([{"op": "test", "path": "/data/k", "value": "other"}, {"op": "replace", "path": "/data/k", "value": "w"}],
         UNPROCESSABLE),
        ([{"op": "replace", "path": "/data/missing", "value": "w"}], UNPROCESSABLE),
        ([{"op": "remove", "path": "/spec/nothing"}], UNPROCESSABLE),
        ([{"op": "frobnicate", "path": "/data/k"}], UNPROCESSABLE),
        ([{"op": "replace", "path": "/metadata/resourceVersion", "value": "1"},
          {"op": "replace", "path": "/data/k", "value": "w"}],
         (409, "Conflict", 'Operation cannot be fulfilled on configmaps "jp": the object has been modified; please '
                           "apply your changes to the latest version and try again")),
        ({"op": "replace", "path": "/data/k", "value": "w"}, (400, "BadRequest", None)),
    ],
    ids=["applied", "failed-test", "replace-missing", "remove-missing", "unknown-op", "stale-resource-version",
         "not-a-list"],
)
def test_json_patch(api, client, ops, expected):
    core = kubernetes.client.CoreV1Api(client)
    core.create_namespaced_config_map(NS, {"metadata": {"name": "jp"}, "data": {"k": "v"}})
    try:
        status, body = _raw(api, "PATCH", f"/api/v1/namespaces/{NS}/configmaps/jp", ops, "application/json-patch+json")
        stored = core.read_namespaced_config_map("jp", NS).data
        if status == 200:
            assert (status, body["data"], stored) == (*expected, expected[1])
        else:
            got = (status, body["reason"], body["message"] if expected[2] else None)
            assert (got, stored) == (expected, {"k": "v"})  # a refused patch changes nothing
    finally:
        core.delete_namespaced_config_map("jp", NS)


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        ("create", {"user": "alice", "password": "s3cr3t"}),
        ("replace", {"user": "alice", "password": "n3w"}),
        ("merge-patch", {"user": "alice", "password": "n3w", "token": "t"}),
        ("json-patch", {"user": "alice", "password": "s3cr3t", "token": "t"}),
    ],
    ids=["create", "replace", "merge-patch", "json-patch"],
)
def test_secret_string_data_is_stored_as_base64_data(api, client, write, expected):
    """stringData is write-only: merged over data as base64 at every write and never stored or returned
    (kubernetes pkg/apis/core/v1/conversion.go Convert_v1_Secret_To_core_Secret: "StringData overwrites Data")."""
    import base64

    core = kubernetes.client.CoreV1Api(client)
    b64 = {k: base64.b64encode(v.encode()).decode() for k, v in {"user": "alice", "password": "old"}.items()}
    created = core.create_namespaced_secret(NS, {"metadata": {"name": f"s-{write}"}, "data": b64,
                                                 "stringData": {"password": "s3cr3t"}})
    try:
        name = created.metadata.name
        if write == "replace":
            core.replace_namespaced_secret(name, NS, {"metadata": {"name": name}, "data": created.data,
                                                      "stringData": {"password": "n3w"}})
        elif write == "merge-patch":
            core.patch_namespaced_secret(name, NS, {"stringData": {"password": "n3w", "token": "t"}})
        elif write == "json-patch":  # stringData is never stored, so the patch adds it whole
            status, _ = _raw(api, "PATCH", f"/api/v1/namespaces/{NS}/secrets/{name}",
                             [{"op": "add", "path": "/stringData", "value": {"token": "t"}}],
                             "application/json-patch+json")
            assert status == 200
        read = core.read_namespaced_secret(name, NS)
        assert read.string_data is None and created.string_data is None
        assert {k: base64.b64decode(v).decode() for k, v in read.data.items()} == expected
        (stored,) = [s for s in api.objects("", "secrets", NS) if s["metadata"]["name"] == name]
        assert "stringData" not in stored
    finally:
        core.delete_namespaced_secret(f"s-{write}", NS)


def test_events_are_selected_by_involved_object_and_unsupported_field_labels_refused(api, client):
    """The field labels the real server supports for core/v1 Events (pkg/apis/core/v1/conversion.go
    AddFieldLabelConversionsForEvent, values from pkg/registry/core/event/strategy.go); any other label is 400
    "field label not supported" (apiserver/pkg/endpoints/handlers/get.go ListResource)."""
    core = kubernetes.client.CoreV1Api(client)
    for i, (name, reason) in enumerate([("job-a", "Started"), ("job-b", "Started"), ("job-a", "Failed")]):
        core.create_namespaced_event(NS, {
            "metadata": {"name": f"ev-{i}"}, "reason": reason, "type": "Normal" if reason == "Started" else "Warning",
            "source": {"component": "graft-operator"},
            "involvedObject": {"kind": "TransferJob", "name": name, "namespace": NS, "uid": f"uid-{name}"}})
    try:
        def names(selector: str) -> list[str]:
            return [e.metadata.name for e in core.list_namespaced_event(NS, field_selector=selector).items]

        assert names("involvedObject.name=job-a") == ["ev-0", "ev-2"]
        assert names("involvedObject.name=job-a,reason!=Started") == ["ev-2"]
        assert names("involvedObject.kind=TransferJob,involvedObject.uid=uid-job-b,type=Normal") == ["ev-1"]
        assert names("source=graft-operator,involvedObject.namespace=emu,metadata.name=ev-1") == ["ev-1"]
        for path, label in [(f"/api/v1/namespaces/{NS}/events?fieldSelector=message%3Dx", "message"),
                            (f"/api/v1/namespaces/{NS}/events?watch=true&fieldSelector=spec.x%3Dy", "spec.x"),
                            (f"/api/v1/namespaces/{NS}/configmaps?fieldSelector=data.k%3Dv", "data.k"),
                            (f"/apis/{G}/{V}/namespaces/{NS}/{P}?fieldSelector=spec.image%3Dx", "spec.image")]:
            status, body = _raw(api, "GET", path)
            expected = (f'"{label}" is not a known field selector: only "metadata.name", "metadata.namespace"'
                        if "configmaps" in path else f"field label not supported: {label}")
            assert (status, body["reason"], body["message"]) == (400, "BadRequest", expected), path
    finally:
        core.delete_collection_namespaced_event(NS)


#: What a v1.32 API server answered the CRD as committed at f45cd14 (see tests/api/test_crd_checker.py).
REFUSED = ("spec.validation.openAPIV3Schema.properties[metadata]: Forbidden: must not specify anything other than "
           "name and generateName, but metadata is implicitly specified")


def crd_before_the_fix() -> dict:
    """The committed CRD with the root metadata description it carried at f45cd14."""
    crd = yaml.safe_load(COMMITTED_CRD.read_text())
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["metadata"] = {
        "type": "object", "description": "Standard object metadata (name, namespace, labels, annotations)."}
    return crd


def test_a_crd_a_real_api_server_refuses_is_refused_the_same_way(api, client):
    """POST (create) and PUT (replace) of the CRD a real server refused: 422 Invalid, its message and causes
    (apimachinery/pkg/api/errors/errors.go NewInvalid); the CRD the fixture installed stays as it was."""
    ext = kubernetes.client.ApiextensionsV1Api(client)
    with pytest.raises(ApiException) as e:
        ext.create_custom_resource_definition(crd_before_the_fix())
    status = json.loads(e.value.body)
    assert (e.value.status, status["reason"]) == (422, "Invalid")
    assert status["message"] == f'CustomResourceDefinition.apiextensions.k8s.io "transferjobs.graft.dev" is invalid: ' \
                                f"{REFUSED}"
    assert status["details"] == {
        "name": "transferjobs.graft.dev", "group": "apiextensions.k8s.io", "kind": "CustomResourceDefinition",
        "causes": [{"reason": "FieldValueForbidden", "field": "spec.validation.openAPIV3Schema.properties[metadata]",
                    "message": REFUSED.split(": ", 1)[1]}]}
    assert kubectl_message(status) == f'The CustomResourceDefinition "transferjobs.graft.dev" is invalid: {REFUSED}'

    with pytest.raises(ApiException) as e:
        ext.replace_custom_resource_definition("transferjobs.graft.dev", crd_before_the_fix())
    assert e.value.status == 422 and json.loads(e.value.body)["message"].endswith(REFUSED)
    stored = api.objects("apiextensions.k8s.io", "customresourcedefinitions")
    (ours,) = [c for c in stored if c["metadata"]["name"] == "transferjobs.graft.dev"]
    assert ours["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["metadata"] == {"type": "object"}


RAY = ("ray.io", "v1", NS, "rayjobs")


def rayjob(name: str, **spec) -> dict:
    head = {"rayStartParams": {}, "template": {"spec": {"containers": [{"name": "ray-head", "image": "ray"}]}}}
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": name},
            "spec": {"entrypoint": "python -c pass", "rayClusterSpec": {"headGroupSpec": head}, **spec}}


def test_rayjobs_are_pruned_and_defaulted_by_kuberays_own_crd(client):
    """KubeRay's real CRD (../shared/kuberay/ray.io_rayjobs.yaml) is installed at start: fields it does not
    declare are dropped silently, at any depth, and its defaults filled in, as on a cluster with KubeRay."""
    co = kubernetes.client.CustomObjectsApi(client)
    body = rayjob("pruned", notAField=1)
    cluster = body["spec"]["rayClusterSpec"]
    cluster["notAField"] = 2
    cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["colour"] = "blue"
    cluster["workerGroupSpecs"] = [{"groupName": "w", "rayStartParams": {}, "template": {"spec": {"containers": [
        {"name": "ray-worker", "image": "ray"}]}}}]  # minReplicas/maxReplicas: required by the CRD, defaulted too
    created = co.create_namespaced_custom_object(*RAY, body)
    spec = created["spec"]
    assert "notAField" not in spec and "notAField" not in spec["rayClusterSpec"]
    assert spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"] == [
        {"name": "ray-head", "image": "ray"}]
    worker = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    assert (spec["backoffLimit"], spec["submissionMode"]) == (0, "K8sJobMode")  # the CRD's defaults
    assert (worker["minReplicas"], worker["maxReplicas"]) == (0, 2147483647)


def test_kuberays_schema_and_cel_rules_refuse_what_kuberay_refuses(client):
    co = kubernetes.client.CustomObjectsApi(client)
    with pytest.raises(ApiException) as e:
        co.create_namespaced_custom_object(*RAY, rayjob("typed", backoffLimit="three"))
    assert e.value.status == 422 and "spec.backoffLimit" in json.loads(e.value.body)["message"]
    with pytest.raises(ApiException) as e:
        co.create_namespaced_custom_object(*RAY, rayjob("managed-by-whom", managedBy="someone"))
    assert e.value.status == 422
    assert "the managedBy field value must be either 'ray.io/kuberay-operator'" in json.loads(e.value.body)["message"]
    # A transition rule (`self == oldSelf`) holds on create and is enforced on update.
    co.create_namespaced_custom_object(*RAY, rayjob("managed", managedBy="ray.io/kuberay-operator"))
    with pytest.raises(ApiException) as e:
        co.patch_namespaced_custom_object(*RAY[:3], "rayjobs", "managed",
                                          {"spec": {"managedBy": "kueue.x-k8s.io/multikueue"}})
    assert e.value.status == 422 and "the managedBy field is immutable" in json.loads(e.value.body)["message"]


def _unlike(sent, got, path="") -> list[str]:
    """Where `got` lost or changed something of `sent` (fields it adds are the schema's defaults)."""
    if isinstance(sent, dict) and isinstance(got, dict):
        return [p for k in sent for p in (_unlike(sent[k], got[k], f"{path}.{k}") if k in got else [f"{path}.{k}"])]
    if isinstance(sent, list) and isinstance(got, list) and len(sent) == len(got):
        return [p for i, (a, b) in enumerate(zip(sent, got, strict=True)) for p in _unlike(a, b, f"{path}[{i}]")]
    return [] if sent == got else [path]


def test_the_operators_rayjob_passes_kuberays_crd_unpruned(client):
    """Everything graft_operator/builder.py puts in a RayJob is declared by KubeRay's CRD: nothing is pruned or
    changed, and nothing is left for KubeRay's defaults."""
    from graft.api.models import TransferJobSpec
    from graft_operator.builder import build_rayjob

    spec = TransferJobSpec.model_validate({
        "model": {"backbone": "smallcnn", "numClasses": 10, "weights": "s3://weights/smallcnn.pt"},
        "data": {"train": "builtin:digits", "imageSize": 8},
        "stages": [{"type": "FrozenFeatures"}, {"type": "Head", "epochs": 2}],
        "storage": {"uri": "s3://graft-bucket/jobs", "endpoint": "http://minio:9000", "region": "us-east-1",
                    "credentialsSecret": {"name": "s3-creds"}},
        "workers": {"replicas": 2, "gpus": 1, "cpus": "2", "memory": "4Gi"},
        "scheduling": {"nodeSelector": {"pool": "gpu"}, "priorityClassName": "batch", "queueName": "team-a",
                       "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]},
        "runPolicy": {"activeDeadlineSeconds": 3600, "backoffLimit": 2},
    })
    sent = build_rayjob("everything", NS, "uid-everything", spec)
    got = kubernetes.client.CustomObjectsApi(client).create_namespaced_custom_object(*RAY, sent)
    assert _unlike(sent["spec"], got["spec"]) == []
    assert _unlike(sent["metadata"]["labels"], got["metadata"]["labels"]) == []
    defaulted = {k for k in got["spec"] if k not in sent["spec"]}
    assert defaulted == set()  # the one spec field KubeRay's CRD defaults (ttlSecondsAfterFinished, 0) is sent


def test_without_kuberays_crds_the_emulator_does_not_start(monkeypatch, tmp_path):
    """../shared/kuberay/ is data beside the repository; without it (and without the download of the pinned files,
    support/upstream_files.py) the tests fail loudly, never run with a RayJob of no schema."""
    from support import kuberay_crds, upstream_files

    monkeypatch.setattr(kuberay_crds, "KUBERAY_DIR", tmp_path / "no-shared" / "kuberay")
    monkeypatch.setattr(upstream_files, "CACHE_DIR", tmp_path / "no-cache")
    monkeypatch.setenv(upstream_files.BASE_URL_ENV, "http://127.0.0.1:9")  # nothing listens there
    kuberay_crds._load.cache_clear()
    try:
        with pytest.raises(kuberay_crds.KubeRayCRDsMissing, match=r"ray\.io_rayjobs\.yaml is not at .*no-shared"):
            with emulated_api(namespaces=[NS]):
                pass
    finally:
        kuberay_crds._load.cache_clear()


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ("a=b", {"a": "b"}, True),
        ("a=b", {"a": "c"}, False),
        ("a==b,c!=d", {"a": "b", "c": "e"}, True),
        ("a in (x, y)", {"a": "y"}, True),
        ("a notin (x,y),b", {"a": "z", "b": ""}, True),
        ("!a", {"a": "1"}, False),
        ("", {}, True),
    ],
    ids=["eq", "eq-miss", "eq-and-neq", "in", "notin-and-exists", "not-exists", "empty"],
)
def test_label_selectors(selector, labels, matches):
    assert label_selector_matches(selector, labels) is matches


def test_list_filters_by_label_selector(client):
    core = kubernetes.client.CoreV1Api(client)
    core.create_namespaced_config_map(NS, {"metadata": {"name": "sel-1", "labels": {"app": "graft", "n": "1"}}})
    core.create_namespaced_config_map(NS, {"metadata": {"name": "sel-2", "labels": {"app": "graft", "n": "2"}}})
    names = [c.metadata.name for c in core.list_namespaced_config_map(NS, label_selector="app=graft,n!=1").items]
    assert names == ["sel-2"]


def test_watch_streams_changes_and_resumes_from_a_resource_version(client):
    co = kubernetes.client.CustomObjectsApi(client)
    listed = co.list_namespaced_custom_object(G, V, NS, P)
    since = listed["metadata"]["resourceVersion"]
    co.create_namespaced_custom_object(G, V, NS, P, transferjob("watched"))
    co.patch_namespaced_custom_object_status(G, V, NS, P, "watched", {"status": {"phase": "Running"}})
    w = kubernetes.watch.Watch()
    seen = []
    for event in w.stream(co.list_namespaced_custom_object, G, V, NS, P, resource_version=since, timeout_seconds=2):
        obj = event["object"]
        seen.append((event["type"], obj["metadata"]["name"], obj.get("status", {}).get("phase")))
        if len(seen) == 2:
            w.stop()
    assert seen == [("ADDED", "watched", None), ("MODIFIED", "watched", "Running")]

    # A live watch sees a change made while it is open.
    got: list[str] = []

    def follow():
        w2 = kubernetes.watch.Watch()
        for event in w2.stream(co.list_namespaced_custom_object, G, V, NS, P,
                               resource_version=co.list_namespaced_custom_object(G, V, NS, P)["metadata"][
                                   "resourceVersion"], timeout_seconds=5):
            got.append(event["type"])
            w2.stop()

    t = threading.Thread(target=follow)
    t.start()
    time.sleep(0.5)
    co.delete_namespaced_custom_object(G, V, NS, P, "watched")
    t.join(10)
    assert got == ["DELETED"]


def test_finalizers_and_owner_garbage_collection(client):
    co = kubernetes.client.CustomObjectsApi(client)
    core = kubernetes.client.CoreV1Api(client)
    owner = co.create_namespaced_custom_object(
        G, V, NS, P, {**transferjob("owner"), "metadata": {"name": "owner", "finalizers": ["test/hold"]}})
    ref = {"apiVersion": f"{G}/{V}", "kind": "TransferJob", "name": "owner", "uid": owner["metadata"]["uid"],
           "controller": True, "blockOwnerDeletion": True}
    core.create_namespaced_config_map(NS, {"metadata": {"name": "child", "ownerReferences": [ref]}})
    co.create_namespaced_custom_object("ray.io", "v1", NS, "rayjobs",
                                       {"metadata": {"name": "child", "ownerReferences": [ref]}, "spec": {}})
    deleting = co.delete_namespaced_custom_object(G, V, NS, P, "owner")
    assert deleting["metadata"]["deletionTimestamp"]  # held by the finalizer
    assert core.read_namespaced_config_map("child", NS)
    co.patch_namespaced_custom_object(G, V, NS, P, "owner", {"metadata": {"finalizers": None}})
    for read in (lambda: co.get_namespaced_custom_object(G, V, NS, P, "owner"),
                 lambda: core.read_namespaced_config_map("child", NS),
                 lambda: co.get_namespaced_custom_object("ray.io", "v1", NS, "rayjobs", "child")):
        with pytest.raises(ApiException) as e:
            read()
        assert e.value.status == 404


def test_request_log_names_user_verb_and_resource(api):
    with api.client(user="auditor") as c:
        co = kubernetes.client.CustomObjectsApi(c)
        co.list_namespaced_custom_object(G, V, NS, P)
        co.patch_namespaced_custom_object_status(G, V, NS, P, "gen", {"status": {"phase": "Pending"}})
    log = [(r.verb, r.group, r.rbac_resource, r.namespace) for r in api.requests_by("auditor")]
    assert log == [("list", G, P, NS), ("patch", G, f"{P}/status", NS)]


KOPF_OPERATOR = textwrap.dedent(
    """
    import kopf

    @kopf.on.startup()
    def configure(settings, **_):
        settings.posting.level = 0

    @kopf.on.create("graft.dev", "v1alpha1", "transferjobs")
    def created(body, name, namespace, patch, **_):
        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"seen-{name}"}, "data": {"k": "v"}}
        kopf.adopt(cm, owner=body)
        import kubernetes
        kubernetes.config.load_kube_config()
        kubernetes.client.CoreV1Api().create_namespaced_config_map(namespace, cm)
        kopf.info(body, reason="Seen", message="the emulator delivered the object")
        patch.status["phase"] = "Pending"
        patch.status["message"] = "seen by kopf"
    """
)


@pytest.mark.slow
def test_a_real_kopf_operator_reacts_to_a_created_object(tmp_path):
    """kopf run as its own process, discovering resources and watching through the emulator."""
    (tmp_path / "op.py").write_text(KOPF_OPERATOR)
    with emulated_api(namespaces=[NS]) as api:
        api.apply_crd(COMMITTED_CRD)
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", user="kopf")
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "--standalone", "--namespace", NS, str(tmp_path / "op.py")],
            env=env, stdout=open(tmp_path / "kopf.log", "wb"), stderr=subprocess.STDOUT)
        try:
            with api.client() as c:
                co = kubernetes.client.CustomObjectsApi(c)
                co.create_namespaced_custom_object(G, V, NS, P, transferjob("hello"))
                deadline = time.monotonic() + 60
                obj = {}
                while time.monotonic() < deadline:
                    obj = co.get_namespaced_custom_object(G, V, NS, P, "hello")
                    if obj.get("status", {}).get("message") == "seen by kopf":
                        break
                    time.sleep(0.3)
                log = (tmp_path / "kopf.log").read_text()
                assert obj.get("status", {}).get("phase") == "Pending", log
                cm = kubernetes.client.CoreV1Api(c).read_namespaced_config_map("seen-hello", NS)
                assert cm.metadata.owner_references[0].uid == obj["metadata"]["uid"]
                events = kubernetes.client.CoreV1Api(c).list_namespaced_event(NS).items
                assert any(e.reason == "Seen" and e.involved_object.name == "hello" for e in events)
                # Deleting the TransferJob lets kopf release its finalizer; the garbage collector
                # then removes the adopted child.
                co.delete_namespaced_custom_object(G, V, NS, P, "hello")
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and api.objects("", "configmaps", NS):
                    time.sleep(0.3)
                assert not [o for o in api.objects("", "configmaps", NS) if o["metadata"]["name"] == "seen-hello"]
        finally:
            proc.terminate()
            proc.wait(20)
        kopf_calls = {(r.verb, r.rbac_resource) for r in api.requests_by("kopf")}
        assert ("patch", "transferjobs/status") in kopf_calls and ("watch", "transferjobs") in kopf_calls
        assert yaml.safe_load(kubeconfig.read_text())["users"][0]["name"] == "kopf"


@pytest.mark.slow
def test_kopf_run_with_graft_handlers_module_creates_the_rayjob(tmp_path):
    """`kopf run -m graft_operator.handlers` (docs/operator.md) works as well as `graft operator`."""
    with emulated_api(namespaces=[NS]) as api:
        api.apply_crd(COMMITTED_CRD)
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", user="kopf-m")
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        log_path = tmp_path / "kopf.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "--standalone", "--namespace", NS, "-m", "graft_operator.handlers"],
            env=env, cwd=tmp_path, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
        try:
            with api.client() as c:
                co = kubernetes.client.CustomObjectsApi(c)
                model = {"backbone": "smallcnn", "numClasses": 10, "weights": "s3://weights/smallcnn.pt"}
                co.create_namespaced_custom_object(G, V, NS, P, transferjob("via-kopf", model=model))
                deadline = time.monotonic() + 60
                rayjobs: list = []
                while time.monotonic() < deadline and not rayjobs:
                    rayjobs = api.objects("ray.io", "rayjobs", NS)
                    time.sleep(0.3)
                assert rayjobs, log_path.read_text()[-3000:]
                # The status names it once KubeRay has said something of it, or after FIRST_STATUS_WAIT without
                # KubeRay (none runs here).
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    obj = co.get_namespaced_custom_object(G, V, NS, P, "via-kopf")
                    if (obj.get("status") or {}).get("rayJobName"):
                        break
                    time.sleep(0.3)
                assert obj["status"]["rayJobName"] == rayjobs[0]["metadata"]["name"]
                assert rayjobs[0]["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
                # Its storage is a local path (file://): valid, but the user hears what that means on a cluster.
                deadline, warned, events = time.monotonic() + 15, [], []
                while time.monotonic() < deadline and not warned:
                    events = kubernetes.client.CoreV1Api(c).list_namespaced_event(NS).items
                    warned = [e for e in events if e.reason == "StorageNotShared" and e.type == "Warning"
                              and e.involved_object.name == "via-kopf"]
                    time.sleep(0.3)
                assert warned, [(e.reason, e.message) for e in events]
                assert "use s3://" in warned[0].message
        finally:
            proc.terminate()
            proc.wait(20)
