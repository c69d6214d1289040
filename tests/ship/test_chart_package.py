"""The packaged chart (scripts/package-chart.py): the .tgz a release pushes and `helm install oci://...` installs
must be the chart the folder tests check, under the project's version."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest
import yaml

from ship.chart import CHART, NAMESPACE, RELEASE, SCENARIOS, helm
from ship.tools import REPO

SCRIPT = REPO / "scripts" / "package-chart.py"
#: The value sets the package is checked under: defaults, namespaced RBAC, and every value changed.
PACKAGE_SCENARIOS = ("default", "namespaced", "all-non-default")


def _version() -> str:
    with (REPO / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]["version"]


def _package(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.fixture(scope="module")
def packaged(tmp_path_factory) -> Path:
    """The chart packaged by the script, as `./dev chart` does, into a scratch folder."""
    proc = _package("--destination", str(tmp_path_factory.mktemp("dist")))
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip())


def _values(scenario: str, tmp_path: Path) -> dict:
    return {"values": SCENARIOS[scenario], "tmp": tmp_path} if SCENARIOS[scenario] else {}


def test_chart_versions_are_the_project_version():
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (meta["version"], meta["appVersion"]) == (_version(), _version()), (
        "set version and appVersion in helm/graft/Chart.yaml to the version in pyproject.toml")


def test_package_is_named_and_versioned_for_the_release(packaged):
    assert packaged.name == f"graft-{_version()}.tgz"
    with tarfile.open(packaged) as tar:
        meta = yaml.safe_load(tar.extractfile("graft/Chart.yaml").read())
    assert (meta["name"], meta["version"], meta["appVersion"]) == ("graft", _version(), _version())


def test_package_holds_the_chart_and_nothing_else(packaged):
    """Only what a chart is made of ships: a stale package or a scratch file in the folder would be in every
    install's release Secret, so .helmignore must keep them out."""
    with tarfile.open(packaged) as tar:
        members = {m.name.removeprefix("graft/") for m in tar.getmembers() if m.isfile()}
    expected = {"Chart.yaml", "values.yaml", "values.schema.json", ".helmignore"}
    expected |= {f"templates/{p.name}" for p in (CHART / "templates").iterdir() if p.suffix in {".yaml", ".tpl"}}
    expected |= {"templates/NOTES.txt"}
    expected |= {f"files/{p.name}" for p in (CHART / "files").glob("*.yaml")}
    assert sorted(members) == sorted(expected)


@pytest.mark.parametrize("scenario", PACKAGE_SCENARIOS)
def test_package_passes_lint_strict(packaged, scenario, tmp_path):
    out = helm("lint", "--strict", str(packaged), "--namespace", NAMESPACE, **_values(scenario, tmp_path))
    assert "1 chart(s) linted, 0 chart(s) failed" in out


@pytest.mark.parametrize("scenario", PACKAGE_SCENARIOS)
def test_template_from_package_equals_template_from_folder(packaged, scenario, tmp_path):
    """What the folder's tests check (test_chart.py) is what an install from the registry gets."""
    args = ("--namespace", NAMESPACE)
    from_package = helm("template", RELEASE, str(packaged), *args, **_values(scenario, tmp_path))
    from_folder = helm("template", RELEASE, str(CHART), *args, **_values(scenario, tmp_path))
    assert "kind: Deployment" in from_folder
    assert from_package == from_folder


#: Name -> (Chart.yaml text change, or None to leave no Chart.yaml; the one line the script must print).
REFUSALS = {
    "version-drifted": (("\nversion: {v}\n", "\nversion: 9.9.9\n"),
                        "{meta}: version 9.9.9 must equal the project version {v} in pyproject.toml"),
    "app-version-drifted": (('appVersion: "{v}"', 'appVersion: "0.0.1"'),
                            "{meta}: appVersion 0.0.1 must equal the project version {v} in pyproject.toml"),
    "not-a-chart": (None, "{chart}: no Chart.yaml here; --chart names the chart's folder"),
}


@pytest.mark.parametrize(("change", "message"), list(REFUSALS.values()), ids=list(REFUSALS))
def test_packaging_refuses_what_it_cannot_release(change, message, tmp_path):
    chart = tmp_path / "graft"
    shutil.copytree(CHART, chart)
    meta = chart / "Chart.yaml"
    if change is None:
        meta.unlink()
    else:
        old, new = (s.format(v=_version()) for s in change)
        assert old in meta.read_text()
        meta.write_text(meta.read_text().replace(old, new))
    proc = _package("--chart", str(chart), "--destination", str(tmp_path / "dist"))
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == f"package-chart: {message.format(meta=meta, chart=chart, v=_version())}\n"
    assert not (tmp_path / "dist").exists()
