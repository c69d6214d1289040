"""The two image names agree wherever a user meets them: the Dockerfile's build lines (targets `operator` and
`trainer`), the chart's operator image, the default `spec.image` the operator gives the Ray pods, and
docs/install.md; and every tag is the project version, so a release bump cannot leave one behind."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml

from graft.api.models import DEFAULT_IMAGE, TransferJobSpec
from graft_operator.builder import build_rayjob
from ship.chart import CHART, one, render
from ship.tools import REPO

DOCKERFILE = REPO / "Dockerfile"
INSTALL = REPO / "docs" / "install.md"
#: `docker build --target <target> -t <image> .`, as the Dockerfile's header and install.md write it.
BUILD_LINE = re.compile(r"docker build --target (\S+)\s+-t (\S+) \.")


def _version() -> str:
    with (REPO / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]["version"]


def _builds(text: str) -> dict[str, str]:
    """Target -> image reference of each build line; a target named twice fails."""
    pairs = BUILD_LINE.findall(text)
    assert len(pairs) == len(dict(pairs)), f"a target is built twice: {pairs}"
    return dict(pairs)


@pytest.fixture(scope="module")
def built() -> dict[str, str]:
    """The images the Dockerfile says it builds."""
    return _builds(DOCKERFILE.read_text())


def test_dockerfile_builds_both_targets_under_the_release_tag(built):
    stages = re.findall(r"^FROM \S+ AS (\S+)$", DOCKERFILE.read_text(), flags=re.M)
    assert sorted(built) == ["operator", "trainer"]
    assert set(built) <= set(stages)
    assert built == {"operator": f"ghcr.io/graft-dev/graft-operator:{_version()}",
                     "trainer": f"ghcr.io/graft-dev/graft-trainer:{_version()}"}


def test_chart_runs_the_operator_image(built):
    values = yaml.safe_load((CHART / "values.yaml").read_text())["image"]
    assert f"{values['repository']}:{values['tag'] or _version()}" == built["operator"]
    (container,) = one(render(), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == built["operator"]


def test_ray_pods_run_the_trainer_image_by_default(built):
    """A TransferJob without `spec.image` gets the trainer image on its head and every worker."""
    job = yaml.safe_load((REPO / "examples" / "digits-lpft.yaml").read_text())
    assert "image" not in job["spec"]
    spec = TransferJobSpec.model_validate(job["spec"])
    cluster = build_rayjob("digits", "ml", "0000", spec)["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    images = {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}
    assert images == {built["trainer"]} == {DEFAULT_IMAGE}


def test_install_doc_builds_and_names_the_same_images(built):
    doc = INSTALL.read_text()
    assert _builds(doc) == built
    # Where each name goes (the table's rows): the operator's in the chart values, the trainer's in spec.image.
    rows = {line.split("|")[1].strip(): line for line in doc.splitlines() if line.startswith("| ")}
    assert f"`{built['operator'].rsplit(':', 1)[0]}`" in rows["operator"]
    assert "`image.repository`" in rows["operator"]
    assert f"`{built['trainer']}`" in rows["trainer"]
    assert "`spec.image`" in rows["trainer"]


def test_install_doc_names_the_release_version():
    """Every image tag, the packaged chart's name and the `--version` of each OCI install are the project
    version: a release bump that leaves one behind has users pull an image or chart that does not exist."""
    doc = INSTALL.read_text()
    tags = re.findall(r"(?:graft-operator|graft-trainer|\$image):([^\s`]+)", doc)
    packages = re.findall(r"dist/graft-(\S+?)\.tgz", doc)
    versions = re.findall(r"oci://\S+/graft --version (\S+)", doc)
    assert tags and packages and versions
    assert set(tags) | set(packages) | set(versions) == {_version()}
