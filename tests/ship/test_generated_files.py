"""Files generated from code must not drift from it: the chart's RBAC rules (operator/rbac.py), the
argocd-cm snippet (the Lua file) and the images' pinned requirements (the tested environment)."""

from __future__ import annotations

import subprocess
import sys

import yaml
from graft.operator import rbac
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ship.tools import REPO

FILES = REPO / "helm" / "graft" / "files"


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / name), *args], capture_output=True, text=True, timeout=120,
        check=False,
    )


def test_chart_rbac_rules_are_the_operators():
    cluster = yaml.safe_load((FILES / "rbac-rules-cluster.yaml").read_text())["rules"]
    namespaced = yaml.safe_load((FILES / "rbac-rules-namespaced.yaml").read_text())["rules"]
    assert cluster == rbac.rules(namespaced=False), "run scripts/chart-files.py after changing operator/rbac.py"
    assert namespaced == rbac.rules(namespaced=True), "run scripts/chart-files.py after changing operator/rbac.py"


def test_chart_files_script_reports_no_drift():
    proc = _script("chart-files.py", "--check")
    assert proc.returncode == 0, proc.stderr


def test_image_locks_match_the_tested_environment():
    proc = _script("image-locks.py", "--check")
    assert proc.returncode == 0, proc.stderr


def test_image_locks_satisfy_pyproject():
    """Every dependency pyproject.toml declares is pinned in the lock of the image that needs it, at a
    version the declaration allows."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {
        "requirements-operator.txt": project["dependencies"],
        "requirements-trainer.txt": project["dependencies"] + project["optional-dependencies"]["trainer"],
    }
    for lock, declared in wanted.items():
        pins = {}
        for line in (REPO / "docker" / lock).read_text().splitlines():
            if line and not line.startswith("#"):
                name, version = line.split("==")
                pins[canonicalize_name(name)] = version
        for spec in declared:
            req = Requirement(spec)
            name = canonicalize_name(req.name)
            if name == "graft":
                continue
            assert name in pins, f"docker/{lock} lacks {req.name}; run scripts/image-locks.py"
            assert req.specifier.contains(pins[name], prereleases=True), f"docker/{lock}: {name}=={pins[name]} !~ {req}"
