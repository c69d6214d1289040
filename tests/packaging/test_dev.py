"""`./dev`, the README's entry point, as a user calls it from elsewhere, and the set of packages it installs."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEV_LOCK, TRAINER_LOCK = ROOT / "requirements-dev.txt", ROOT / "docker" / "requirements-trainer.txt"
INSTALLER = {"pip", "setuptools"}


def test_dev_graft_reads_paths_relative_to_the_callers_directory(tmp_path):
    shutil.copy(ROOT / "examples" / "digits-lpft.yaml", tmp_path / "mine.yaml")
    proc = subprocess.run([str(ROOT / "dev"), "graft", "validate", "mine.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _pins(lock: Path) -> set[str]:
    spec = importlib.util.spec_from_file_location("graft_locks", ROOT / "scripts" / "locks.py")
    locks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(locks)
    return set(locks.read_pins(lock))


@pytest.mark.parametrize("extra", ["dev", "trainer"])
def test_what_a_sync_removes_is_what_the_installed_set_does_not_hold(extra):
    """`./dev` removes what `scripts/locks.py --extraneous --extra SET` prints after installing graft[SET]. Run in
    the tests' venv (graft[dev]): for trainer that is every test-only package, and never the trainer's own
    packages nor the installer (pip, setuptools), which a trainer venv needs though only the dev lock pins them."""
    proc = subprocess.run([sys.executable, "scripts/locks.py", "--extraneous", "--extra", extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    removed = set(proc.stdout.split())
    dev, trainer = _pins(DEV_LOCK), _pins(TRAINER_LOCK)
    kept = trainer | INSTALLER if extra == "trainer" else dev
    assert not removed & kept, f"would remove what graft[{extra}] needs: {sorted(removed & kept)}"
    assert (dev - kept) <= removed, f"would keep test-only packages: {sorted((dev - kept) - removed)}"


def test_dev_setup_names_the_sets_it_installs():
    proc = subprocess.run([str(ROOT / "dev"), "setup", "tests"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == "./dev setup: the set to install is dev (the default) or trainer, not 'tests'\n"


# A venv whose python records what ./dev asks of it (and answers as pip and scripts/locks.py do when there is
# nothing to change), so that which set ./dev installs when can be seen without installing gigabytes.
FAKE_PYTHON = """#!/bin/sh
echo "$*" >>"$(dirname "$0")/../calls"
"""


def _repo(tmp_path: Path, stamp: str | None) -> Path:
    repo = tmp_path / "repo"
    (repo / ".venv" / "bin").mkdir(parents=True)
    for name in ("dev", "pyproject.toml", "requirements-dev.txt"):
        shutil.copy(ROOT / name, repo / name)
    for name in ("python", "graft"):
        (repo / ".venv" / "bin" / name).write_text(FAKE_PYTHON)
        (repo / ".venv" / "bin" / name).chmod(0o755)
    current = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + DEV_LOCK.read_bytes()).hexdigest()
    if stamp is not None:
        (repo / ".venv" / ".graft-installed").write_text(stamp.replace("CURRENT", current).replace("OLD", "0" * 64)
                                                         + "\n")
    return repo


@pytest.mark.parametrize("stamp,command,installed,after", [
    (None, ["graft", "--help"], "trainer", "trainer"),
    (None, ["setup"], "dev", "dev"),
    ("CURRENT trainer", ["graft", "--help"], None, "trainer"),
    ("CURRENT trainer", ["setup"], "dev", "dev"),
    ("CURRENT trainer", ["setup", "trainer"], None, "trainer"),
    ("CURRENT dev", ["graft", "--help"], None, "dev"),
    ("CURRENT dev", ["setup", "trainer"], None, "dev"),
    ("CURRENT", ["graft", "--help"], None, ""),
    ("CURRENT", ["setup", "trainer"], None, ""),
    ("OLD trainer", ["graft", "--help"], "trainer", "trainer"),
    ("OLD dev", ["graft", "--help"], "dev", "dev"),
    ("CURRENT trainer", ["chart"], "dev", "dev"),
    ("CURRENT dev", ["chart", "--destination", "out"], None, "dev"),
], ids=["fresh-clone-demo", "fresh-clone-setup", "demo-venv-demo", "demo-venv-gains-the-tests",
        "demo-venv-checked", "dev-venv-serves-the-demo", "dev-venv-never-cut-down", "stamp-before-sets-is-dev",
        "stamp-before-sets-is-checked-as-dev",
        "lock-changed-demo-venv", "lock-changed-dev-venv-stays-dev", "chart-needs-helm-from-dev",
        "chart-in-dev-venv"])
def test_dev_installs_the_set_its_command_needs_and_keeps_a_bigger_one(tmp_path, stamp, command, installed, after):
    """`./dev graft` needs graft[trainer] only; `./dev setup` (and `./dev test`) graft[dev]. A venv that has dev
    keeps it (it holds all of trainer); a stamp from before there were sets was written for dev."""
    repo = _repo(tmp_path, stamp)
    proc = subprocess.run([str(repo / "dev"), *command], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = (repo / ".venv" / "calls").read_text().splitlines()
    installs = [c.split("-e ", 1)[1] for c in calls if "-m pip install" in c and "-e " in c]
    assert installs == ([f".[{installed}]"] if installed else [])
    if installed:  # what the lock does not name for that set is asked for, to be removed
        assert f"scripts/locks.py --extraneous --extra {installed}" in calls
    if command[0] == "setup" and not installed:  # a venv that looked in step is compared with its set's lock
        assert calls[0] == f"scripts/locks.py --check-venv --extra {after or 'dev'}"
    stamp_now = (repo / ".venv" / ".graft-installed").read_text().split()
    assert stamp_now[1:] == ([after] if after else [])
    if command[0] == "chart":  # then the packaging script, with the arguments given
        assert calls[-1] == " ".join(["scripts/package-chart.py", *command[1:]])
