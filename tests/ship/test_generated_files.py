"""Files generated from code must not drift from it: the chart's RBAC rules (graft_operator/rbac.py), the
argocd-cm snippet (the Lua file), and the locks: the venv the tests run in is requirements-dev.txt, and the
images' requirements are its subsets."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from graft_operator import rbac
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
    assert cluster == rbac.rules(namespaced=False), "run scripts/chart-files.py after changing graft_operator/rbac.py"
    assert namespaced == rbac.rules(namespaced=True), "run scripts/chart-files.py after changing graft_operator/rbac.py"


def test_chart_files_script_reports_no_drift():
    proc = _script("chart-files.py", "--check")
    assert proc.returncode == 0, proc.stderr


def _locks_module():
    spec = importlib.util.spec_from_file_location("graft_locks", REPO / "scripts" / "locks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_venv_is_the_locked_environment():
    """What the tests run in is exactly requirements-dev.txt: a registry release cannot change it, only a
    change to the lock in this repository can."""
    proc = _script("locks.py", "--check-venv")
    assert proc.returncode == 0, proc.stderr


def test_every_lock_is_its_closure_of_the_locked_environment():
    proc = _script("locks.py", "--check")
    assert proc.returncode == 0, proc.stderr


def test_a_venv_that_moved_on_is_named_package_by_package(tmp_path):
    """What a user sees when the venv is not the lock (a newer release installed by hand, a lock edited)."""
    locks = _locks_module()
    pins = locks.read_pins(locks.DEV_LOCK)
    installed = pins["platformdirs"]
    lock = tmp_path / "requirements-dev.txt"
    lock.write_text(locks.DEV_LOCK.read_text().replace(f"platformdirs=={installed}\n", "platformdirs==99.0\n")
                    + "not-a-real-dist==1.0\n")
    assert locks.venv_problems(lock) == [
        "requirements-dev.txt pins not-a-real-dist==1.0, which is not installed",
        f"requirements-dev.txt pins platformdirs==99.0, but {installed} is installed",
        "the venv is not the locked environment: run ./dev setup to re-sync it",
    ]


def test_a_stale_image_lock_is_named_package_by_package(tmp_path):
    locks = _locks_module()
    trainer = REPO / "docker" / "requirements-trainer.txt"
    installed = locks.read_pins(trainer)["platformdirs"]
    stale = tmp_path / "requirements-trainer.txt"
    stale.write_text(trainer.read_text().replace(f"platformdirs=={installed}\n", "platformdirs==99.0\n"))
    assert locks.lock_problems({trainer: stale}) == [
        f"docker/requirements-trainer.txt: platformdirs is pinned 99.0, the environment has {installed}",
        "docker/requirements-trainer.txt is stale: run scripts/locks.py (or ./dev upgrade to re-resolve everything)",
    ]


def _pins(lock: str) -> dict[str, str]:
    return _locks_module().read_pins(REPO / lock)


@pytest.mark.parametrize("lock,extras", [
    ("requirements-dev.txt", ("trainer", "dev")),
    ("docker/requirements-operator.txt", ()),
    ("docker/requirements-trainer.txt", ("trainer",)),
], ids=["dev", "operator-image", "trainer-image"])
def test_locks_satisfy_pyproject(lock, extras):
    """Every dependency pyproject.toml declares is pinned in the lock that needs it, at a version the
    declaration allows."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]]
    pins = _pins(lock)
    for spec in declared:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        if name == "graft":
            continue
        assert name in pins, f"{lock} lacks {req.name}; run scripts/locks.py"
        assert req.specifier.contains(pins[name], prereleases=True), f"{lock}: {name}=={pins[name]} !~ {req}"


@pytest.mark.parametrize("lock", ["docker/requirements-operator.txt", "docker/requirements-trainer.txt"])
def test_image_locks_are_the_dev_locks_versions(lock):
    """The images run what the tests ran: each image pin is the dev lock's pin."""
    dev = _pins("requirements-dev.txt")
    assert {name: dev.get(name) for name in _pins(lock)} == _pins(lock)


def test_dockerfile_builds_with_the_locked_setuptools():
    pinned = re.findall(r"setuptools==([\w.]+)", (REPO / "Dockerfile").read_text())
    assert pinned == [_pins("requirements-dev.txt")["setuptools"]]
