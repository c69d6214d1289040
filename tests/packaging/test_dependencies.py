"""Dependencies are declared exactly as imported (issue 24 part 5): every third-party module the production code
imports (at any depth, function-level imports included) belongs to a distribution pyproject.toml names for it, and
every distribution it names is imported. A module that arrives only as someone else's requirement can go away with
the next release of that someone; a declared one nothing imports is a pin that constrains for nothing."""

from __future__ import annotations

import ast
import importlib.metadata as md
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: Package name -> folder, as the wheel maps them.
PACKAGE_DIRS: dict[str, str] = PROJECT["tool"]["setuptools"]["package-dir"]
#: What a user installs: the core and the trainer extra (dev is the test environment's, not the product's).
DECLARED = {canonicalize_name(Requirement(r).name)
            for r in PROJECT["project"]["dependencies"] + PROJECT["project"]["optional-dependencies"]["trainer"]}
#: Declared distributions no production module imports, each with the reason. None today.
NOT_IMPORTED_ALLOW: dict[str, str] = {
    "onnxscript": "torch.onnx.export(dynamo=True) imports it (graft_trainer/onnx_export.py); Graft never does",
}


def _imports() -> dict[str, set[str]]:
    """Top-level module -> the production files importing it (relative imports are our own)."""
    found: dict[str, set[str]] = {}
    for folder in PACKAGE_DIRS.values():
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                    node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
                for name in names:
                    found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


IMPORTS = _imports()
OWN = {name.split(".")[0] for name in PACKAGE_DIRS}
THIRD_PARTY = {m: files for m, files in IMPORTS.items() if m not in sys.stdlib_module_names and m not in OWN}
#: Top-level module -> the installed distributions that provide it (`PIL` -> pillow, `yaml` -> PyYAML).
PROVIDERS = {m: {canonicalize_name(d) for d in dists} for m, dists in md.packages_distributions().items()}


def test_the_walk_sees_the_imports():
    assert {"kopf", "torch", "pydantic", "yaml"} <= set(THIRD_PARTY), sorted(THIRD_PARTY)


def test_every_imported_module_is_declared():
    undeclared = {m: (sorted(PROVIDERS.get(m, ())) or ["(not installed)"], sorted(files)[:3])
                  for m, files in THIRD_PARTY.items() if not PROVIDERS.get(m, set()) & DECLARED}
    assert not undeclared, "imported but not declared in pyproject.toml (module: providing distributions, files): " + \
        "; ".join(f"{m}: {dists} in {files}" for m, (dists, files) in sorted(undeclared.items()))


def test_every_declared_distribution_is_imported():
    provided = {d for m in THIRD_PARTY for d in PROVIDERS.get(m, ())}
    unused = sorted(DECLARED - provided - set(NOT_IMPORTED_ALLOW))
    assert not unused, f"declared in pyproject.toml but imported by no production module: {unused}"
