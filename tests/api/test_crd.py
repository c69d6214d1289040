"""The CRD is generated from the models; the committed copy must not drift."""

from __future__ import annotations

import yaml

from graft.api.crd import COMMITTED_CRD, build_crd, crd_yaml


def test_committed_crd_matches_models():
    assert COMMITTED_CRD.read_text() == crd_yaml(), (
        "helm/graft/files/transferjobs.graft.dev.yaml drifted from the models; regenerate it with "
        "`graft crd > helm/graft/files/transferjobs.graft.dev.yaml`"
    )


def _walk(node, path="$"):
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def test_schema_is_structural():
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        if isinstance(node, dict):
            assert "$ref" not in node, path
            assert "const" not in node, path
            assert not ("anyOf" in node and any(o.get("type") == "null" for o in node["anyOf"])), path
            if "properties" in node and not path.endswith(".properties"):
                assert node.get("type") == "object", path
                assert "additionalProperties" not in node, path


def test_every_status_field_declared():
    status = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    declared = set(status["properties"])
    assert {
        "observedGeneration", "conditions", "phase", "stage", "progress", "stages", "rayJobName",
        "modelURI", "attempts", "jobDeploymentStatus", "jobStatus", "dashboardURL",
    } <= declared


def test_printer_columns_and_names():
    crd = yaml.safe_load(crd_yaml())
    names = crd["spec"]["names"]
    assert names["shortNames"] == ["tj"] and names["categories"] == ["graft"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert {"Phase", "Stage", "Progress", "Age"} <= set(columns)
