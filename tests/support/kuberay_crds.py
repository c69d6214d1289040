"""KubeRay's own CustomResourceDefinitions, the real schema of a RayJob and a RayCluster.

They are data kept beside the repository, in `../shared/kuberay/` (see its README: copied unchanged from
ray-project/kuberay, `ray-operator/config/crd/bases/`), read at test time and never copied into the project. The
folder is found relative to this repository's root, never by an absolute path: CI clones the repository into a
folder of its own with a copy of `shared/` beside it. A clone with no `shared/` beside it downloads them once from
their pinned KubeRay commit (support/upstream_files.py); either way their sha256 must be the pinned one. When
neither works the error says so in one line; a test that needs KubeRay's schema must not quietly run without it.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from support import upstream_files

REPO = Path(__file__).resolve().parents[2]
KUBERAY_DIR = (upstream_files.SHARED_DIR / "kuberay").resolve()
FILES = ("ray.io_rayjobs.yaml", "ray.io_rayclusters.yaml")

#: Neither shared/kuberay/ nor the download has the file (one line: the file, both sources, what to do).
KubeRayCRDsMissing = upstream_files.UpstreamFileMissing


def path(name: str) -> Path:
    """The path of one of KubeRay's CRD files, with the pinned sha256: from shared/kuberay/, else downloaded."""
    return upstream_files.path(upstream_files.pinned("kuberay", name), KUBERAY_DIR / name)


@cache
def _load(name: str) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader reads the 25k lines ~6x faster
    with path(name).open() as f:
        return yaml.load(f, Loader=loader)  # noqa: S506 (a safe loader)


def crd(name: str) -> dict[str, Any]:
    """One of KubeRay's CRDs (a fresh copy), e.g. `crd("ray.io_rayjobs.yaml")`."""
    return copy.deepcopy(_load(name))


def crds() -> list[dict[str, Any]]:
    """Every KubeRay CRD the emulated API server installs: RayJob and RayCluster."""
    return [crd(name) for name in FILES]
