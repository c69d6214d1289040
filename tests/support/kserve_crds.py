"""KServe's own InferenceService CRD (`../shared/kserve/`, copied unchanged from kserve/kserve `config/crd/full/`),
read at test time and never copied into the project; a clone without `shared/` downloads it once from its pinned
commit (support/upstream_files.py). Either way its sha256 must be the pinned one."""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import yaml

from support import upstream_files

KSERVE_DIR = (upstream_files.SHARED_DIR / "kserve").resolve()
INFERENCESERVICES = "serving.kserve.io_inferenceservices.yaml"


@cache
def _load(name: str) -> dict[str, Any]:
    path = upstream_files.path(upstream_files.pinned("kserve", name), KSERVE_DIR / name)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # 2 MB of YAML: the C loader is several times faster
    with path.open() as f:
        return yaml.load(f, Loader=loader)  # noqa: S506 (a safe loader)


def crd(name: str = INFERENCESERVICES) -> dict[str, Any]:
    """One of KServe's CRDs (a fresh copy)."""
    return copy.deepcopy(_load(name))
