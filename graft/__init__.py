"""Graft: a Kubernetes-native transfer-learning operator."""

from pathlib import Path as _Path

__version__ = "0.1.0"

# The control plane lives in the checkout's `operator/` folder and the data plane in `trainer/`;
# a wheel installs them inside this package as `graft.operator` and `graft.trainer`. `operator/`
# deliberately has no `__init__.py`: with one, any interpreter whose sys.path starts at the checkout
# (`python -m ...` from the repo root in a fresh venv) imports it instead of the standard library's
# `operator` and dies at start-up. In a source checkout (editable install) the folders sit beside
# this package, so the checkout root joins this package's search path for those two names.
_here = _Path(__file__).resolve().parent
if not (_here / "operator").is_dir() and (_here.parent / "operator").is_dir():
    __path__.append(str(_here.parent))
