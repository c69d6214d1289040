"""Upstream files the tests read (KubeRay's CRDs and the like), found without copying them into the repository.

Each file is pinned below: the upstream repository, commit and path it comes from, and the sha256 of its bytes. A
file is read from `shared/<folder>/` beside the repository when that folder is there (this workspace, CI with a copy
of it), else downloaded once from its pinned commit on GitHub (raw.githubusercontent.com) into `.cache/upstream/`
at the repository root (git-ignored) and reused. Whichever source it comes from, its bytes must have the pinned
sha256, so every checkout tests against the same data. When neither source works, or the bytes differ, the error
is one line naming the file, both sources and what to do.

`GRAFT_UPSTREAM_BASE_URL` replaces `https://raw.githubusercontent.com` (a mirror; the tests serve the pinned files
from 127.0.0.1): a file is fetched from `<base>/<owner>/<repo>/<commit>/<path>`.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_DIR = REPO.parent / "shared"
CACHE_DIR = REPO / ".cache" / "upstream"
BASE_URL_ENV = "GRAFT_UPSTREAM_BASE_URL"
DEFAULT_BASE_URL = "https://raw.githubusercontent.com"
TIMEOUT = 60.0  # seconds for one download (the largest file is 1.4 MB)


class UpstreamFileMissing(FileNotFoundError):
    """A pinned file is neither beside the repository nor downloadable."""


class UpstreamFileMismatch(ValueError):
    """A pinned file's bytes do not have the pinned sha256 (changed, tampered with, or another commit)."""


@dataclass(frozen=True)
class Pinned:
    """One upstream file: where it sits under `shared/`, where it comes from, and the sha256 of its bytes."""

    folder: str
    name: str
    repo: str
    commit: str
    path: str
    sha256: str

    def url(self) -> str:
        base = (os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
        return f"{base}/{self.repo}/{self.commit}/{self.path}"


def _pins() -> dict[tuple[str, str], Pinned]:
    # Commits and paths as each folder's README in shared/ gives them; sha256 of the files there (2026-12-07).
    kuberay = ("ray-project/kuberay", "feeaf72", "ray-operator/config/crd/bases")
    kueue = ("kubernetes-sigs/kueue", "ff69552e79", "config/components/crd/bases")
    kserve_crds = ("kserve/kserve", "aaac4e294", "config/crd/full")
    kserve_runtimes = ("kserve/kserve", "aaac4e294", "config/runtimes")
    table = [
        ("kuberay", "ray.io_rayjobs.yaml", kuberay,
         "01a5cf3b17c1769fda44af7e82debcd98722f0c27b9ab84d084681c6649121f5"),
        ("kuberay", "ray.io_rayclusters.yaml", kuberay,
         "c44704442eef0c6721ad40c1d66782c8bd3fdab9d3344306a5820910a679baa1"),
        ("kueue", "kueue.x-k8s.io_clusterqueues.yaml", kueue,
         "e0a5fc9b370c70f3d993d4f599865817338ecf94187b30b15b12ff33c579bd55"),
        ("kueue", "kueue.x-k8s.io_localqueues.yaml", kueue,
         "dd10ef8d3578e7212fa52763549e7b6be0949793a5b924495fcd293330109fed"),
        ("kueue", "kueue.x-k8s.io_resourceflavors.yaml", kueue,
         "0241c2dbade80718dbc771a6603b3b6f20d9f7a80a3da3f0d0ffe477c0f0283c"),
        ("kserve", "serving.kserve.io_inferenceservices.yaml", kserve_crds,
         "57c3bf13f77de94678bf2ae3748056ec071ad2b9e88d6a28f44fb4710758fcff"),
        ("kserve", "serving.kserve.io_clusterservingruntimes.yaml", kserve_crds,
         "f721d19516670d4a81181e231b1e58cbc32c36435969182ae457fad537151cc8"),
        ("kserve", "kserve-tritonserver.yaml", kserve_runtimes,
         "96df21eb1c385fc6f40c1fe03fb266412921a3252d21202a9056b8f78eab0c35"),
    ]
    return {(folder, name): Pinned(folder, name, repo, commit, f"{under}/{name}", sha)
            for folder, name, (repo, commit, under), sha in table}


PINNED = _pins()


def pinned(folder: str, name: str) -> Pinned:
    """The pin of `shared/<folder>/<name>`."""
    try:
        return PINNED[(folder, name)]
    except KeyError:
        known = ", ".join(f"{f}/{n}" for f, n in PINNED)
        raise UpstreamFileMissing(f"{folder}/{name} is not a pinned upstream file; pinned: {known}") from None


def path(pin: Pinned, shared: Path | None = None) -> Path:
    """A local copy of the pinned file with the pinned sha256: `shared` (default `shared/<folder>/<name>` beside the
    repository) when it exists, else the cached download, downloading it first when needed."""
    shared = shared if shared is not None else SHARED_DIR / pin.folder / pin.name
    if shared.is_file():
        _check(pin, shared.read_bytes(), str(shared))
        return shared
    cached = CACHE_DIR / pin.folder / pin.name
    if cached.is_file() and _sha256(cached.read_bytes()) == pin.sha256:
        return cached  # a cached file with other bytes (a download cut short) is fetched again
    url = pin.url()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:  # noqa: S310 (an https URL or a test's mirror)
            data = answer.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise UpstreamFileMissing(
            f"{pin.name} is not at {shared} and could not be downloaded from {url} ({_reason(exc)}): put "
            f"{pin.repo}'s files in {shared.parent}/ beside the repository, or allow the download") from None
    _check(pin, data, url)
    cached.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so an interrupted run never leaves a partial file where a checked one is expected.
    partial = cached.with_suffix(f".{os.getpid()}.part")
    partial.write_bytes(data)
    partial.replace(cached)
    return cached


def _check(pin: Pinned, data: bytes, source: str) -> None:
    got = _sha256(data)
    if got != pin.sha256:
        raise UpstreamFileMismatch(
            f"{pin.name} from {source} has sha256 {got}, not the pinned {pin.sha256} ({pin.repo} at {pin.commit}, "
            f"{pin.path}; tests/support/upstream_files.py): a changed file, or one from another commit")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    reason = getattr(exc, "reason", None) or exc
    return " ".join(str(reason).split()) or type(exc).__name__
