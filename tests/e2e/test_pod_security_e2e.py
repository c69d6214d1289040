"""The operator's cluster-wide options end to end: the real `graft operator` process against the emulated API server
(the committed CRD and KubeRay's real RayJob CRD installed through the API). An operator started without `--allow`
refuses a TransferJob with a hostPath volume (Failed/InvalidSpec naming the field, no RayJob); one started with
`--allow hostPath` (what the chart's podSecurity.allow passes) creates its RayJob with the volume on the head and the
workers. The second also has `--trainer-image` (the chart's trainerImage): a job with no spec.image runs that image.
No KubeRay and no training: the verdict is the RayJob, or its absence."""

from __future__ import annotations

import time
from typing import Any

import kubernetes
import pytest
from support.committed import COMMITTED_CRD
from support.kube import emulated_api
from support.operator_proc import OperatorProcess

pytestmark = pytest.mark.slow

G, V, P = "graft.dev", "v1alpha1", "transferjobs"
NS_DEFAULT, NS_ALLOW = "graft-restricted", "graft-hostpath"
WAIT = 60.0
MIRROR = "registry.internal:5000/ml/graft-trainer:0.1.0"
HOST_PATH = {"name": "nvme", "hostPath": {"path": "/mnt/nvme", "type": "Directory"}}


def _job(name: str, storage: str) -> dict[str, Any]:
    return {"apiVersion": f"{G}/{V}", "kind": "TransferJob", "metadata": {"name": name}, "spec": {
        "model": {"backbone": "smallcnn", "numClasses": 10, "weights": "s3://models/smallcnn.pt"},
        "data": {"train": "/nvme/digits/train", "imageSize": 8},
        "stages": [{"type": "FrozenFeatures"}, {"type": "Head", "epochs": 3}],
        "storage": {"uri": storage},
        "pod": {"volumes": [HOST_PATH], "volumeMounts": [{"name": "nvme", "mountPath": "/nvme", "readOnly": True}]},
    }}


def _wait(what: str, fn, operator: OperatorProcess) -> Any:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        found = fn()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out after {WAIT}s waiting for {what}\n{operator.log()[-4000:]}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("podsecurity")
    with emulated_api(namespaces=[NS_DEFAULT, NS_ALLOW]) as api:
        api.apply_crd(COMMITTED_CRD)
        operators = [OperatorProcess(api, NS_DEFAULT, work / "restricted", metrics=False),
                     OperatorProcess(api, NS_ALLOW, work / "hostpath", metrics=False,
                                     args=("--allow", "hostPath", "--trainer-image", MIRROR))]
        client = api.client()
        try:
            for op in operators:
                op.start()
            yield kubernetes.client.CustomObjectsApi(client), operators, work
        finally:
            for op in operators:
                op.stop()
            client.close()


def _rayjobs(co, namespace: str, name: str) -> list[dict[str, Any]]:
    return co.list_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs",
                                            label_selector=f"graft.dev/transferjob={name}")["items"]


def test_a_hostpath_job_is_refused_by_default_and_runs_where_the_operator_allows_it(cluster):
    co, (restricted, allowing), work = cluster
    for ns in (NS_DEFAULT, NS_ALLOW):
        co.create_namespaced_custom_object(G, V, ns, P, _job("nvme-data", f"file://{work}/{ns}"))

    def refused():
        st = co.get_namespaced_custom_object(G, V, NS_DEFAULT, P, "nvme-data").get("status") or {}
        return st if st.get("phase") == "Failed" else None

    st = _wait("Failed/InvalidSpec in the restricted namespace", refused, restricted)
    assert st["reason"] == "InvalidSpec", st
    assert "spec.pod.volumes[0].hostPath" in st["message"] and "'hostPath'" in st["message"], st

    rayjob = _wait("the RayJob in the allowing namespace", lambda: _rayjobs(co, NS_ALLOW, "nvme-data"), allowing)[0]
    cluster_spec = rayjob["spec"]["rayClusterSpec"]  # as stored: after KubeRay's CRD pruned what it does not declare
    for template in (cluster_spec["headGroupSpec"]["template"], cluster_spec["workerGroupSpecs"][0]["template"]):
        assert HOST_PATH in template["spec"]["volumes"]
        assert {"name": "nvme", "mountPath": "/nvme", "readOnly": True} in template["spec"]["containers"][0][
            "volumeMounts"]
    assert _rayjobs(co, NS_DEFAULT, "nvme-data") == []
    # And its status follows the RayJob (the mirror loop does not refuse what the operator allowed).
    named = _wait("the allowed job's status naming its RayJob", lambda: (co.get_namespaced_custom_object(
        G, V, NS_ALLOW, P, "nvme-data").get("status") or {}).get("rayJobName"), allowing)
    assert named == rayjob["metadata"]["name"]


def _images(rayjob: dict[str, Any]) -> set[str]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
    return {c["image"] for t in templates for c in t["spec"]["containers"]}


def test_a_job_with_no_image_runs_the_operators_trainer_image_and_one_with_its_own_keeps_it(cluster):
    from graft.api.models import DEFAULT_IMAGE

    co, (restricted, allowing), work = cluster
    own = "ghcr.io/acme/graft-trainer-cuda12:2"
    for ns in (NS_DEFAULT, NS_ALLOW):
        for name, image in (("no-image", None), ("own-image", own)):
            job = _job(name, f"file://{work}/{ns}")
            del job["spec"]["pod"]  # no hostPath: both operators create it
            if image:
                job["spec"]["image"] = image
            co.create_namespaced_custom_object(G, V, ns, P, job)
    expected = {(NS_ALLOW, "no-image"): MIRROR, (NS_DEFAULT, "no-image"): DEFAULT_IMAGE,
                (NS_ALLOW, "own-image"): own, (NS_DEFAULT, "own-image"): own}
    for (ns, name), image in expected.items():
        operator = allowing if ns == NS_ALLOW else restricted
        rayjob = _wait(f"the RayJob of {ns}/{name}", lambda ns=ns, name=name: _rayjobs(co, ns, name), operator)[0]
        assert _images(rayjob) == {image}, (ns, name)
