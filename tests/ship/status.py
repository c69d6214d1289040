"""How the tools a platform team uses read a TransferJob's status: Argo CD's Lua health check, kstatus
(Flux, `kpt live status`, cli-utils) and `kubectl wait --for=condition=...`.

kstatus is a Go library; `kstatus()` implements its documented rules for custom resources
(sigs.k8s.io/cli-utils/pkg/kstatus/status, "generic" resources): deletionTimestamp -> Terminating;
status.observedGeneration present and different from metadata.generation -> InProgress; the first
condition in the list that is Reconciling=True -> InProgress or Stalled=True -> Failed; otherwise Current.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]
HEALTH_LUA = REPO / "deploy" / "argocd" / "transferjob-health.lua"
ARGOCD_CM = REPO / "deploy" / "argocd" / "argocd-cm.yaml"
HEALTH_KEY = "resource.customizations.health.graft.dev_TransferJob"


def fixture_names() -> list[str]:
    """Every status fixture, by file stem (files starting with `_` are shared parts, not fixtures)."""
    return sorted(p.stem for p in FIXTURES.glob("*.yaml") if not p.name.startswith("_"))


def load_fixture(name: str) -> dict[str, Any]:
    """A whole TransferJob: the fixture, with its `spec` keys laid over the shared spec."""
    obj = yaml.safe_load((FIXTURES / f"{name}.yaml").read_text())
    spec = yaml.safe_load((FIXTURES / "_spec.yaml").read_text())
    spec.update(obj.get("spec") or {})
    obj["spec"] = spec
    return obj


def _true(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind and c.get("status") == "True":
            return c
    return None


def derived_phase(obj: dict[str, Any]) -> str:
    """status.phase as the operator derives it from the conditions: the first True of these, else Pending."""
    for kind in ("Failed", "Succeeded", "Suspended", "Running"):
        if _true(obj, kind):
            return kind
    return "Pending"


@dataclass(frozen=True)
class KStatus:
    status: str
    message: str


def kstatus(obj: dict[str, Any]) -> KStatus:
    """kstatus's computed status of a custom resource (see the module docstring for the rules)."""
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return KStatus("Terminating", "Resource scheduled for deletion")
    status = obj.get("status") or {}
    if "observedGeneration" in status and status["observedGeneration"] != meta.get("generation"):
        return KStatus(
            "InProgress",
            f"{obj['kind']} generation is {meta.get('generation')}, but latest observed generation is "
            f"{status['observedGeneration']}",
        )
    for c in status.get("conditions") or []:
        if c.get("type") == "Reconciling" and c.get("status") == "True":
            return KStatus("InProgress", c.get("message", ""))
        if c.get("type") == "Stalled" and c.get("status") == "True":
            return KStatus("Failed", c.get("message", ""))
    return KStatus("Current", "Resource is current")


def condition_met(obj: dict[str, Any], kind: str) -> bool:
    """Whether `kubectl wait --for=condition=<kind>` returns: the condition is True and, when it says
    which generation it was set for, that generation is the current one."""
    c = _true(obj, kind)
    if c is None:
        return False
    observed = c.get("observedGeneration")
    return observed is None or observed >= (obj.get("metadata") or {}).get("generation", 0)


def argocd_health_lua() -> str:
    """The Lua health check exactly as shipped in the argocd-cm snippet."""
    cm = yaml.safe_load(ARGOCD_CM.read_text())
    return cm["data"][HEALTH_KEY]


def argocd_health(obj: dict[str, Any], script: str | None = None) -> dict[str, str]:
    """Run the health check the way Argo CD does (gopher-lua is Lua 5.1; `obj` is a global) and return
    its `{status, message}`."""
    from lupa import lua51

    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(copy.deepcopy(obj), recursive=True)
    result = lua.execute(script if script is not None else argocd_health_lua())
    return {k: v for k, v in dict(result).items()}
