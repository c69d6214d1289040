"""docs/install.md's security section: its RBAC and admission policy examples are valid Kubernetes objects, and the
policy's CEL refuses a TransferJob naming a ServiceAccount outside its list (evaluated with cel-python, as
tests/support/cel.py evaluates the CRD's rules)."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from celpy import json_to_cel
from celpy.celtypes import BoolType
from support.cel import compile_rule

from graft.api.podsecurity import EXCEPTIONS

DOC = Path(__file__).resolve().parents[2] / "docs" / "install.md"
KUBERNETES = kubernetes_validate.latest_version()


def _section() -> str:
    text = DOC.read_text()
    start = text.index("## Security: who may run what")
    return text[start:text.index("\n## ", start + 1)]


def _objects() -> list[dict]:
    blocks = re.findall(r"```yaml\n(.*?)```", _section(), flags=re.S)
    return [d for block in blocks for d in yaml.safe_load_all(block) if d is not None]


def test_the_examples_are_valid_kubernetes_objects():
    objects = _objects()
    assert sorted(o["kind"] for o in objects) == ["Role", "RoleBinding", "ValidatingAdmissionPolicy",
                                                  "ValidatingAdmissionPolicyBinding"]
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def _policy() -> dict:
    return next(o for o in _objects() if o["kind"] == "ValidatingAdmissionPolicy")


def _admits(pod: dict | None) -> bool:
    job = {"apiVersion": "graft.dev/v1alpha1", "kind": "TransferJob", "metadata": {"name": "j"},
           "spec": {} if pod is None else {"pod": pod}}
    (validation,) = _policy()["spec"]["validations"]
    compile_rule(validation["messageExpression"])  # it must at least be valid CEL
    result = compile_rule(validation["expression"]).evaluate({"object": json_to_cel(job)})
    assert isinstance(result, BoolType), result  # not an evaluation error
    return bool(result)


@pytest.mark.parametrize(("pod", "admitted"), [
    (None, True), ({}, True), ({"serviceAccountName": "graft-trainer"}, True),
    ({"serviceAccountName": "cluster-admin-sa"}, False), ({"serviceAccountName": "default"}, False),
], ids=["no-pod", "no-service-account", "listed", "other", "default-by-name"])
def test_the_admission_policy_admits_only_the_listed_service_accounts(pod, admitted):
    assert _admits(pod) is admitted


def test_the_section_names_every_exception_and_the_service_account_caveat():
    section = _section()
    assert "may run pods there as any ServiceAccount of that namespace" in section
    assert "This is an example" in section
    table = {m for m in re.findall(r"^\| `([A-Za-z]+)`", section, flags=re.M)}
    table |= {n for line in section.splitlines() if line.startswith("| `hostNetwork`")
              for n in re.findall(r"`(\w+)`", line.split("|")[1])}
    assert table == set(EXCEPTIONS)
