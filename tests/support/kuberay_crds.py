"""KubeRay's own CustomResourceDefinitions, the real schema of a RayJob and a RayCluster.

They are data kept beside the repository, in `../shared/kuberay/` (see its README: copied unchanged from
ray-project/kuberay, `ray-operator/config/crd/bases/`), read at test time and never copied into the project.
The folder is found relative to this repository's root, never by an absolute path: CI clones the repository
into a folder of its own with a copy of `shared/` beside it. Missing files fail loudly; a test that needs
KubeRay's schema must not quietly run without it.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
KUBERAY_DIR = (REPO.parent / "shared" / "kuberay").resolve()
FILES = ("ray.io_rayjobs.yaml", "ray.io_rayclusters.yaml")


class KubeRayCRDsMissing(FileNotFoundError):
    """The shared KubeRay CRDs are not beside the repository."""


def path(name: str) -> Path:
    """The path of one of KubeRay's CRD files, checked to exist."""
    found = KUBERAY_DIR / name
    if not found.is_file():
        raise KubeRayCRDsMissing(
            f"KubeRay's CRD {name} is not at {found}. The emulated API server serves RayJobs and RayClusters with "
            f"KubeRay's real schema, read from shared/kuberay/ beside the repository ({REPO.parent}/shared/kuberay); "
            "copy that folder there (it is not part of the repository, see its README).")
    return found


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
