"""How Argo CD, kstatus (Flux) and `kubectl wait` read a TransferJob's status (conditions, observedGeneration,
phase), on fixtures for every phase. The Argo CD check is the Lua shipped in deploy/argocd/argocd-cm.yaml, run by
Lua 5.1."""

from __future__ import annotations

import jsonschema
import pytest
from support.kube.schema import jsonschema_for

from graft.api.crd import build_crd
from graft.api.models import TransferJobStatus
from ship.status import (
    HEALTH_LUA,
    argocd_health,
    argocd_health_lua,
    condition_met,
    derived_phase,
    fixture_names,
    kstatus,
    load_fixture,
)

#: fixture -> (Argo CD status, Argo CD message, kstatus, phase, `kubectl wait --for=condition=Succeeded` returns)
EXPECTED = {
    "no-status": (
        "Progressing", "Waiting for the Graft operator to pick up the TransferJob", "Current", "Pending", False,
    ),
    "pending": ("Progressing", "RayJob flowers-5f0c2f4e is Initializing", "InProgress", "Pending", False),
    "retrying": (
        "Progressing", "Attempt 1 failed (stage Head: worker lost); retrying, 2 retries left", "InProgress",
        "Pending", False,
    ),
    "running": (
        "Progressing", "Head (1/3 stages done): RayJob flowers-5f0c2f4e is Running", "InProgress", "Running", False,
    ),
    "suspended": (
        "Suspended", "Suspended by spec.runPolicy.suspend; progress is kept", "Current", "Suspended", False,
    ),
    "succeeded": ("Healthy", "All 3 stages succeeded", "Current", "Succeeded", True),
    "failed-backoff": (
        "Degraded",
        "BackoffLimitExceeded: 4 attempts failed (backoffLimit 3); last: stage FullFineTune: CUDA out of memory",
        "Failed", "Failed", False,
    ),
    "failed-invalid": (
        "Degraded", "InvalidSpec: spec.stages[0]: 'Head' needs a preceding 'FrozenFeatures' stage", "Failed", "Failed",
        False,
    ),
    "stale-generation": (
        "Progressing", "Waiting for the Graft operator to observe generation 3", "InProgress", "Suspended", False,
    ),
}


def test_every_fixture_has_expectations():
    assert sorted(EXPECTED) == fixture_names()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_argocd_health(name):
    status, message, *_ = EXPECTED[name]
    assert argocd_health(load_fixture(name)) == {"status": status, "message": message}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_kstatus(name):
    assert kstatus(load_fixture(name)).status == EXPECTED[name][2]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_kubectl_wait_for_succeeded(name):
    assert condition_met(load_fixture(name), "Succeeded") is EXPECTED[name][4]


def test_every_argocd_and_kstatus_outcome_is_covered():
    assert {e[0] for e in EXPECTED.values()} == {"Healthy", "Progressing", "Degraded", "Suspended"}
    assert {e[2] for e in EXPECTED.values()} == {"Current", "InProgress", "Failed"}
    assert {e[3] for e in EXPECTED.values()} == {"Pending", "Running", "Suspended", "Succeeded", "Failed"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_follows_the_status_contract(name):
    """The fixtures are objects the API server would store and the operator would write: valid against the CRD,
    phase derived from the conditions, each condition at the status's observedGeneration."""
    obj = load_fixture(name)
    schema = jsonschema_for(build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    jsonschema.validate(obj, schema)
    status = obj.get("status")
    if status is None:
        return
    TransferJobStatus.model_validate(status)
    assert status["phase"] == derived_phase(obj) == EXPECTED[name][3]
    conditions = {c["type"]: c for c in status["conditions"]}
    for c in conditions.values():
        assert c["observedGeneration"] == status["observedGeneration"], c["type"]
        assert c["lastTransitionTime"].endswith("Z")
    phase = status["phase"]
    reconciling = conditions.get("Reconciling", {}).get("status") == "True"
    stalled = conditions.get("Stalled", {}).get("status") == "True"
    assert reconciling == (phase in ("Pending", "Running")), "Reconciling=True exactly while Pending/Running"
    if reconciling:
        assert conditions["Reconciling"]["reason"] in ("Pending", "Running")
    assert stalled == (phase == "Failed"), "Stalled=True exactly when Failed"
    if stalled:
        assert conditions["Stalled"]["reason"] == conditions["Failed"]["reason"] == status["reason"]


def test_health_check_in_argocd_cm_is_the_lua_file():
    assert argocd_health_lua() == HEALTH_LUA.read_text()


def test_health_check_reads_conditions_not_the_phase_column():
    """A stale or hand-edited printer column must not turn a failed job green."""
    obj = load_fixture("failed-backoff")
    obj["status"]["phase"] = "Succeeded"
    assert argocd_health(obj)["status"] == "Degraded"


def test_health_check_survives_a_status_without_conditions():
    obj = load_fixture("no-status")
    obj["status"] = {"observedGeneration": 1}
    assert argocd_health(obj) == {"status": "Progressing", "message": "Pending"}
