"""Graft: a Kubernetes-native transfer-learning operator."""

from pathlib import Path as _Path

__version__ = "0.1.0"

# A wheel installs `operator/` and `trainer/` as `graft.operator` and `graft.trainer` (pyproject.toml's
# package-dir); `operator/` has no `__init__.py`, or `python -m pip` run in the checkout would import it instead
# of the standard library's `operator`. In a checkout its root joins this package's path, because packaging
# cannot say it: setuptools' editable finder misses a namespace package that package-dir maps
# (pypa/setuptools#4943; editable_mode=compat maps neither folder, =strict works outside the checkout only),
# and `python -c`/`-m` run in the checkout import this folder, not the install. The cost: every folder of the
# checkout also imports as `graft.<folder>` (graft.tests, a second copy as graft.graft); nothing imports those.
_here = _Path(__file__).resolve().parent
if not (_here / "operator").is_dir() and (_here.parent / "operator").is_dir():
    __path__.append(str(_here.parent))
