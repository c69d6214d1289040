"""The CRD is generated from the models; the committed copy must not drift, and it must be a CRD the API
server accepts (structural schema, valid CEL) that says what the models say."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from support.cel import all_rules, cel_violations, compile_rule
from support.committed import COMMITTED_CRD
from support.kube.schema import jsonschema_for, prune

from graft.api import models as m
from graft.api.crd import build_crd, crd_yaml
from graft.api.validation import validate_document

EXAMPLES = sorted(Path(__file__).resolve().parents[2].joinpath("examples").glob("*.yaml"))


def _schema():
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


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


def _schema_nodes(node, path="$"):
    """Every sub-schema (not every dict: `properties` maps and CEL rules are not schemas)."""
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from _schema_nodes(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _schema_nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _schema_nodes(node["additionalProperties"], f"{path}{{}}")


# What apiextensions.k8s.io/v1 refuses in a schema, or what makes it non-structural.
_FORBIDDEN = {"$ref", "$schema", "$defs", "definitions", "id", "const", "patternProperties", "dependencies", "oneOf"}


def test_schema_is_structural():
    for path, node in _schema_nodes(_schema()):
        assert not _FORBIDDEN & set(node), (path, _FORBIDDEN & set(node))
        assert node.get("uniqueItems") is not True, path
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, path
            assert node.get("anyOf", [{"type": "integer"}, {"type": "string"}]) == [
                {"type": "integer"},
                {"type": "string"},
            ], path
        else:
            assert node.get("type") in ("object", "array", "string", "integer", "number", "boolean"), path
            assert "anyOf" not in node and "allOf" not in node and "not" not in node, path
        if "properties" in node:
            assert node["type"] == "object" and "additionalProperties" not in node, path
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(bound, False), bool), (path, bound)
        if node.get("x-kubernetes-list-type") == "map":
            keys = node["x-kubernetes-list-map-keys"]
            assert set(keys) <= set(node["items"].get("required", [])), path
    # The root metadata schema may carry `type: object` and nothing else (it may restrict only name and
    # generateName); a description is enough for a real API server to refuse the whole CRD
    # (apiextensions-apiserver/pkg/apiserver/schema/validation.go, validateStructuralMetadataInvariants).
    assert _schema()["properties"]["metadata"] == {"type": "object"}


def test_crd_is_a_valid_apiextensions_v1_object():
    """Checked against Kubernetes' own OpenAPI schema for CustomResourceDefinition (kubernetes-validate)."""
    kubernetes_validate.validate(build_crd(), kubernetes_validate.latest_version(), strict=True)


def test_every_cel_rule_compiles():
    rules = all_rules(_schema())
    assert len(rules) >= 5
    for rule in rules:
        compile_rule(rule)


def test_every_field_is_described_for_kubectl_explain():
    spec = _schema()["properties"]["spec"]
    status = _schema()["properties"]["status"]
    for root, name in ((spec, "spec"), (status, "status")):
        for path, node in _schema_nodes(root, name):
            if not path.endswith("{}"):  # map values (nodeSelector, metrics) are described by their map
                assert len(node.get("description", "")) >= 10, f"{path} has no useful description"


def test_union_fields_name_their_stage_types():
    item = _schema()["properties"]["spec"]["properties"]["stages"]["items"]
    assert "(Pretrain only.)" in item["properties"]["data"]["description"]
    assert "FullFineTune only" in item["properties"]["backboneLrScale"]["description"]
    assert item["properties"]["type"]["enum"] == list(m.STAGE_TYPES)


def test_every_status_field_declared():
    """The API server silently drops undeclared status fields: every model field must be in the CRD."""
    status = _schema()["properties"]["status"]
    assert set(status["properties"]) == set(m.TransferJobStatus.model_json_schema(by_alias=True)["properties"])
    assert {
        "observedGeneration", "conditions", "phase", "stage", "progress", "stages", "rayJobName",
        "modelURI", "attempts", "jobDeploymentStatus", "jobStatus", "dashboardURL",
    } <= set(status["properties"])
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map" and conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["properties"]) == {
        "type", "status", "reason", "message", "lastTransitionTime", "observedGeneration",
    }


def test_a_full_status_round_trips_through_the_schema():
    """A status as the operator writes it (ledger projection included) passes the CRD schema unchanged."""
    from graft.ledger import Ledger

    ledger = Ledger.create("uid-1", "job", ["FrozenFeatures", "Head"])
    ledger.stages[0].state = m.StageState.SUCCEEDED
    ledger.stages[0].metrics = {"seconds": 3.5}
    status = {
        "observedGeneration": 2,
        "conditions": [
            {"type": "Running", "status": "True", "reason": "Running", "message": "",
             "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 2},
        ],
        "phase": "Running", "rayJobName": "job-abc", "attempts": 1, **ledger.to_status(),
    }
    doc = yaml.safe_load(EXAMPLES[0].read_text()) | {"status": status}
    jsonschema.validate(doc, jsonschema_for(_schema()))
    m.TransferJobStatus.model_validate(status)


def test_pod_pass_through_objects_survive_the_api_servers_pruning():
    """spec.pod's Kubernetes objects (env valueFrom, envFrom refs, affinity) keep every nested field through pruning
    (support/crdcheck.py transcribes the API server's): an `additionalProperties: true` beside
    preserve-unknown-fields emptied them."""
    pod = {
        "env": [{"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "token"}}}],
        "envFrom": [{"secretRef": {"name": "extra"}}, {"configMapRef": {"name": "settings", "optional": True}}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["gpu"]}]}]}}},
    }
    doc = yaml.safe_load(EXAMPLES[0].read_text())
    doc["spec"]["pod"] = copy.deepcopy(pod)
    assert prune(doc, _schema(), root=True)["spec"]["pod"] == pod


def test_printer_columns_and_names():
    crd = yaml.safe_load(crd_yaml())
    names = crd["spec"]["names"]
    assert names["shortNames"] == ["tj"] and names["categories"] == ["graft"]
    assert crd["spec"]["scope"] == "Namespaced"
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase" and columns["Stage"] == ".status.stage"
    assert columns["Progress"] == ".status.progress" and columns["Age"] == ".metadata.creationTimestamp"


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_pass_schema_cel_and_models(example):
    doc = yaml.safe_load(example.read_text())
    jsonschema.validate(doc, jsonschema_for(_schema()))
    assert cel_violations(_schema(), doc) == []
    assert validate_document(doc)[1] == []


def test_cel_stage_rules_agree_with_the_models():
    """Stage lists (every one of up to three types, every order of all four): the API server's CEL rules on
    the list and the models accept the same ones."""
    base = yaml.safe_load(EXAMPLES[0].read_text())
    samples = {
        "Pretrain": {"type": "Pretrain", "data": "builtin:digits-clean", "numClasses": 10},
        "FrozenFeatures": {"type": "FrozenFeatures"},
        "Head": {"type": "Head"},
        "FullFineTune": {"type": "FullFineTune"},
    }
    list_rules = {"x-kubernetes-validations": _schema()["properties"]["spec"]["properties"]["stages"][
        "x-kubernetes-validations"
    ]}
    lists = [t for n in (1, 2, 3) for t in itertools.product(m.STAGE_TYPES, repeat=n)]
    lists += list(itertools.permutations(m.STAGE_TYPES))
    accepted = 0
    for types in lists:
        doc = copy.deepcopy(base)
        doc["spec"]["stages"] = [samples[t] for t in types]
        doc["spec"]["model"]["weights"] = "torchvision:DEFAULT"
        by_models = not validate_document(doc)[1]
        by_cel = not cel_violations(list_rules, doc["spec"]["stages"])
        assert by_models == by_cel, (types, validate_document(doc)[1])
        accepted += by_models
    assert len(lists) == 4 + 16 + 64 + 24
    # in order, once each, Head only after FrozenFeatures: 3 singles, 4 pairs, 3 triples, all four
    assert accepted == 3 + 4 + 3 + 1


def test_cel_rejects_fields_of_other_stage_types():
    doc = yaml.safe_load(EXAMPLES[0].read_text())
    doc["spec"]["stages"][1]["epochs"] = 3  # FrozenFeatures has no epochs
    assert cel_violations(_schema(), doc) == [
        ("spec.stages[1]", "a FrozenFeatures stage takes only: type, batchSize, actors")
    ]
    assert [str(p) for p in validate_document(doc)[1]] == [
        "spec.stages[1].epochs: unknown field (not part of the TransferJob API; check the spelling and `graft crd`)"
    ]


def test_jsonschema_for_rejects_unknown_fields_only_when_strict():
    doc = yaml.safe_load(EXAMPLES[0].read_text())
    doc["spec"]["model"]["colour"] = "blue"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, jsonschema_for(_schema()))
    jsonschema.validate(doc, jsonschema_for(_schema(), strict_fields=False))
