"""The CRD checker (support/crdcheck.py) refuses what kube-apiserver refuses, with its message, and every CRD
we ship or install passes it.

A real API server (v1.32) refused Graft's CRD while every test passed: its root `metadata` schema carried a
description. The expected messages below are the server's own wording and field paths (the Kubernetes
sources cited in support/crdcheck.py); the first one is what `kubectl apply` printed on that cluster.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from support import kuberay_crds
from support.committed import COMMITTED_CRD
from support.crdcheck import check_crd, invalid_status, kubectl_message, printer_column_problems

from graft.api.crd import build_crd, crd_yaml

NAME = "transferjobs.graft.dev"
#: One version, so the v1 -> internal conversion lifts its schema to spec.validation (see crdcheck.py).
ROOT = "spec.validation.openAPIV3Schema"
SPEC = f"{ROOT}.properties[spec]"
METADATA_REFUSED = (f"{ROOT}.properties[metadata]: Forbidden: must not specify anything other than name and "
                    "generateName, but metadata is implicitly specified")


def _root(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def crd_before_the_fix() -> dict[str, Any]:
    """The CRD as committed at f45cd14 (helm/graft/files/transferjobs.graft.dev.yaml): today's, with the
    description its root metadata schema carried then."""
    crd = build_crd()
    _root(crd)["properties"]["metadata"] = {
        "type": "object", "description": "Standard object metadata (name, namespace, labels, annotations)."}
    return crd


def test_the_crd_a_real_api_server_refused_is_refused_with_its_message():
    errors = check_crd(crd_before_the_fix())
    assert [str(e) for e in errors] == [METADATA_REFUSED]
    status = invalid_status(NAME, errors)
    # The Status body the server answers (apimachinery/pkg/api/errors/errors.go NewInvalid) ...
    assert (status["code"], status["reason"]) == (422, "Invalid")
    assert status["message"] == f'CustomResourceDefinition.apiextensions.k8s.io "{NAME}" is invalid: {METADATA_REFUSED}'
    assert status["details"]["causes"] == [{
        "reason": "FieldValueForbidden", "field": f"{ROOT}.properties[metadata]",
        "message": "Forbidden: must not specify anything other than name and generateName, but metadata is "
                   "implicitly specified"}]
    # ... and, from it, exactly the line kubectl printed on the v1.32 cluster.
    assert kubectl_message(status) == (
        'The CustomResourceDefinition "transferjobs.graft.dev" is invalid: spec.validation.openAPIV3Schema.'
        "properties[metadata]: Forbidden: must not specify anything other than name and generateName, but "
        "metadata is implicitly specified")


def _stages(r: dict[str, Any]) -> dict[str, Any]:
    return r["properties"]["spec"]["properties"]["stages"]


def _set(path: list[Any], value: Any):
    """A mutation of the CRD: set the value at a path from the root schema."""
    def apply(crd: dict[str, Any]) -> None:
        node = _root(crd)
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return apply


def _pop(path: list[Any]):
    def apply(crd: dict[str, Any]) -> None:
        node = _root(crd)
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return apply


P = "properties"
# (mutation of a copy of our CRD, the errors a real server answers). Each cites its rule.
BROKEN = {
    # schema/validation.go validateStructuralMetadataInvariants: only name/generateName may be restricted
    "metadata-restricts-labels": (
        _set([P, "metadata"], {"type": "object", P: {"labels": {"type": "object"}}}),
        [METADATA_REFUSED]),
    # validateStructuralInvariants: every specified field has a type
    "field-without-type": (
        _pop([P, "spec", P, "model", "type"]),
        [f"{SPEC}.properties[model].type: Required value: must not be empty for specified object fields"]),
    # validateStructuralInvariants: an array has items
    "array-without-items": (
        _pop([P, "spec", P, "stages", "items"]),
        [f"{SPEC}.properties[stages].items: Required value: must be specified"]),
    # validation.go ValidateCustomResourceDefinitionOpenAPISchema: structs have properties, maps
    # additionalProperties, never both
    "additionalProperties-beside-properties": (
        _set([P, "spec", P, "model", "additionalProperties"], {"type": "string"}),
        [f"{SPEC}.properties[model].additionalProperties: Forbidden: additionalProperties and properties are mutual "
         "exclusive"]),
    # validateExtensions: int-or-string excludes preserve-unknown-fields
    "int-or-string-and-preserve-unknown-fields": (
        _set([P, "spec", P, "workers", P, "memory", "x-kubernetes-preserve-unknown-fields"], True),
        [f"{SPEC}.properties[workers].properties[memory].x-kubernetes-preserve-unknown-fields: Invalid value: true: "
         "must be false if x-kubernetes-int-or-string is true"]),
    # validateStructuralInvariants: an embedded resource is an object with properties (or preserving unknowns)
    "embedded-resource-on-a-string": (
        _set([P, "spec", P, "image", "x-kubernetes-embedded-resource"], True),
        [f"{SPEC}.properties[image].properties: Required value: must not be empty if x-kubernetes-embedded-resource "
         "is true without x-kubernetes-preserve-unknown-fields",
         f'{SPEC}.properties[image].type: Invalid value: "string": must be object if x-kubernetes-embedded-resource '
         "is true"]),
    # ValidateCustomResourceDefinitionOpenAPISchema: list-map keys are item properties
    "list-map-key-not-an-item-property": (
        _set([P, "status", P, "conditions", "x-kubernetes-list-map-keys"], ["kind"]),
        [f'{ROOT}.properties[status].properties[conditions].x-kubernetes-list-map-keys: Invalid value: '
         '[]string{"kind"}: entries must all be names of item properties']),
    # validateMapListKeysMapSet: a list-map key is required or defaulted
    "list-map-key-optional": (
        _set([P, "status", P, "conditions", "items", "required"], ["status"]),
        [f"{ROOT}.properties[status].properties[conditions].items.properties[type].default: Required value: this "
         "property is in x-kubernetes-list-map-keys, so it must have a default or be a required property"]),
    # ValidateCustomResourceDefinitionOpenAPISchema: x-kubernetes-list-type only on arrays
    "list-type-on-an-object": (
        _set([P, "spec", P, "model", "x-kubernetes-list-type"], "atomic"),
        [f'{SPEC}.properties[model].type: Invalid value: "object": must be array if x-kubernetes-list-type is '
         "specified"]),
    # specStandardValidatorV3.validate: no defaults in top-level apiVersion, kind, metadata
    "default-in-top-level-apiVersion": (
        _set([P, "apiVersion", "default"], "graft.dev/v1alpha1"),
        [f"{ROOT}.properties[apiVersion].default: Forbidden: must not be set in top-level apiVersion"]),
    # defaulting/validation.go: a default survives pruning
    "default-with-an-unknown-field": (
        _set([P, "spec", P, "workers", "default"], {"replicas": 1, "colour": "blue"}),
        [f'{SPEC}.properties[workers].default: Invalid value: map[string]interface {{}}{{"colour":"blue", '
         '"replicas":1}: must not have unknown fields']),
    # ValidateCustomResourceDefinitionOpenAPISchema: uniqueItems is quadratic
    "uniqueItems": (
        _set([P, "spec", P, "stages", "uniqueItems"], True),
        [f"{SPEC}.properties[stages].uniqueItems: Forbidden: uniqueItems cannot be set to true since the runtime "
         "complexity becomes quadratic"]),
    # x-kubernetes-validations: oldSelf only where old and new values correlate (not inside a plain list)
    "transition-rule-inside-a-list": (
        lambda crd: _stages(_root(crd))["items"]["x-kubernetes-validations"].append(
            {"rule": "self == oldSelf", "message": "stages are immutable"}),
        [f'{SPEC}.properties[stages].items.x-kubernetes-validations[6].rule: Invalid value: "self == oldSelf": oldSelf '
         f"cannot be used on the uncorrelatable portion of the schema within {SPEC}.properties[stages]"]),
    # x-kubernetes-validations: a rule's message is one line
    "rule-message-with-a-line-break": (
        lambda crd: _stages(_root(crd))["x-kubernetes-validations"][0].update(message="each stage\ntype once"),
        [f'{SPEC}.properties[stages].x-kubernetes-validations[0].message: Invalid value: "each stage\\ntype once": '
         "message must not contain line breaks"]),
    # validateCustomResourceDefinitionValidation: with the status subresource only some keywords at the root
    "root-enum-with-status-subresource": (
        _set(["enum"], [{}]),
        [f"{ROOT}: Invalid value: apiextensions.JSONSchemaProps{{...}}: only [Description Type Format Title Maximum "
         "ExclusiveMaximum Minimum ExclusiveMinimum MaxLength MinLength Pattern MaxItems MinItems UniqueItems "
         "MultipleOf Required Items Properties ExternalDocs Example XPreserveUnknownFields XValidations] fields are "
         "allowed at the root of the schema if the status subresource is enabled"]),
    # ValidateCustomResourceDefinitionNames: plural is a DNS-1035 label, and the CRD's name follows it
    "plural-not-a-dns-label": (
        lambda crd: crd["spec"]["names"].update(plural="TransferJobs"),
        ['metadata.name: Invalid value: "transferjobs.graft.dev": must be spec.names.plural+"."+spec.group',
         'spec.names.plural: Invalid value: "TransferJobs": a DNS-1035 label must consist of lower case '
         "alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric "
         "character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"]),
    # validateCustomResourceDefinitionSpec: scope
    "scope-not-supported": (
        lambda crd: crd["spec"].update(scope="Global"),
        ['spec.scope: Unsupported value: "Global": supported values: "Cluster", "Namespaced"']),
    # validateCustomResourceDefinitionSpec: exactly one storage version; and
    # ValidateCustomResourceDefinitionStoredVersions: status.storedVersions holds only the first (PrepareForCreate),
    # so the second is missing there too (what a kube-apiserver v1.32 printed)
    "two-storage-versions": (
        lambda crd: crd["spec"]["versions"].append({**copy.deepcopy(crd["spec"]["versions"][0]), "name": "v1beta1"}),
        ["spec.versions: Invalid value: []apiextensions.CustomResourceDefinitionVersion{...}: must have exactly one "
         "version marked as storage version",
         'status.storedVersions: Invalid value: []string{"v1alpha1"}: must have the storage version v1beta1']),
    # ValidateCustomResourceColumnDefinition: printer column types (lifted to spec.additionalPrinterColumns)
    "printer-column-type": (
        lambda crd: crd["spec"]["versions"][0]["additionalPrinterColumns"][0].update(type="text"),
        ['spec.additionalPrinterColumns[0].type: Invalid value: "text": must be one of '
         "boolean,date,integer,number,string"]),
}
# validateStructuralInvariants: additionalProperties never at the root (and the root with a status
# subresource takes no additionalProperties, and they never sit beside properties: three rules, three errors)
BROKEN["additionalProperties-at-root"] = (
    _set(["additionalProperties"], {"type": "string"}),
    [f"{ROOT}.additionalProperties: Forbidden: additionalProperties and properties are mutual exclusive",
     f"{ROOT}: Invalid value: apiextensions.JSONSchemaProps{{...}}: only [Description Type Format Title Maximum "
     "ExclusiveMaximum Minimum ExclusiveMinimum MaxLength MinLength Pattern MaxItems MinItems UniqueItems "
     "MultipleOf Required Items Properties ExternalDocs Example XPreserveUnknownFields XValidations] fields are "
     "allowed at the root of the schema if the status subresource is enabled",
     f"{ROOT}.additionalProperties: Forbidden: must not be used at the root"])


@pytest.mark.parametrize("mutate,expected", BROKEN.values(), ids=BROKEN.keys())
def test_a_broken_rule_is_refused_with_the_servers_message(mutate, expected):
    crd = build_crd()
    mutate(crd)
    assert sorted(str(e) for e in check_crd(crd)) == sorted(expected)


CEL_UNDEFINED = {
    # what a kube-apiserver v1.32 printed: has() is located at its `(` (the macro takes the call's location)
    "in-has": ("self.type != 'Pretrain' || has(self.dat)",
               "compilation failed: ERROR: <input>:1:31: undefined field 'dat'\n"
               " | self.type != 'Pretrain' || has(self.dat)\n"
               " | ..............................^"),
    # a plain select is located at its `.` (cel-go parser: the select's op token)
    "select": ("self.type != 'Pretrain' || self.dat > 0",
               "compilation failed: ERROR: <input>:1:32: undefined field 'dat'\n"
               " | self.type != 'Pretrain' || self.dat > 0\n"
               " | ...............................^"),
    # has() of a deeper path: the unknown name is an operand, a plain select, not the presence test
    "operand-of-has": ("has(self.dat.x)",
                       "compilation failed: ERROR: <input>:1:9: undefined field 'dat'\n"
                       " | has(self.dat.x)\n"
                       " | ........^"),
}


@pytest.mark.parametrize("expr,expected", CEL_UNDEFINED.values(), ids=CEL_UNDEFINED.keys())
def test_a_cel_rule_naming_a_field_the_schema_lacks_does_not_compile(expr, expected):
    """cel-go type-checks rules against the schema; `dat` names no field of a stage. (The column and caret follow
    cel-go's format; cel-python parses but does not type-check, so crdcheck checks field names.)"""
    crd = build_crd()
    rule = _stages(_root(crd))["items"]["x-kubernetes-validations"][0]
    rule["rule"] = expr
    (error,) = check_crd(crd)
    assert error.field == f"{SPEC}.properties[stages].items.x-kubernetes-validations[0].rule"
    assert error.detail == expected


SHIPPED = {
    "graft-crd-output": lambda: yaml.safe_load(crd_yaml()),  # what `graft crd` prints (graft/cli.py)
    "helm-chart-file": lambda: yaml.safe_load(COMMITTED_CRD.read_text()),  # helm/graft/files/
}


@pytest.mark.parametrize("load", SHIPPED.values(), ids=SHIPPED.keys())
def test_every_crd_we_ship_is_accepted(load):
    """The chart's rendered CRD is checked in tests/ship/test_chart.py (it needs helm)."""
    crd = load()
    assert [str(e) for e in check_crd(crd)] == []
    assert printer_column_problems(crd) == []


@pytest.mark.parametrize("name", kuberay_crds.FILES)
def test_kuberays_real_crds_are_accepted(name):
    """A fidelity check of the checker itself: KubeRay's CRDs install on real clusters, so it must accept them,
    with their 300-odd defaults, list-map keys, int-or-string fields and CEL rules (transition rules included)."""
    crd = kuberay_crds.crd(name)
    assert [str(e) for e in check_crd(crd)] == []
    assert printer_column_problems(crd) == []


def test_a_printer_column_naming_no_field_is_reported():
    """Not an API-server rule (it accepts any `.a.b` path and kubectl prints an empty column): our own lint."""
    crd = build_crd()
    crd["spec"]["versions"][0]["additionalPrinterColumns"][0]["jsonPath"] = ".status.phaze"
    assert check_crd(crd) == []
    assert printer_column_problems(crd) == [
        "spec.versions[0].additionalPrinterColumns[0].jsonPath: .status.phaze names no field of the schema (kubectl "
        "prints an empty column)"]
