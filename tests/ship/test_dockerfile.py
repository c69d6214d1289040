"""The Dockerfile: hadolint-clean, two targets, non-root operator with a passwd entry."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from ship.tools import REPO

DOCKERFILE = REPO / "Dockerfile"
HADOLINT = Path(sys.executable).with_name("hadolint")


def _hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, timeout=60,
                          check=False)


def test_hadolint_passes():
    proc = _hadolint(DOCKERFILE)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_is_really_checking(tmp_path):
    """The linter run above is live: the habits the Dockerfile avoids are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y wget\nRUN pip install kopf\n")
    out = _hadolint(bad).stdout
    assert {"DL3007", "DL3008", "DL3013"} <= set(re.findall(r"DL\d{4}", out)), out


def _stages() -> dict[str, list[str]]:
    stages: dict[str, list[str]] = {}
    current = None
    for line in DOCKERFILE.read_text().splitlines():
        m = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line)
        if m:
            current = m.group(1)
            stages[current] = []
        elif current and line and not line.startswith("#"):
            stages[current].append(line)
    return stages


def test_targets_and_users():
    stages = _stages()
    assert {"operator", "trainer"} <= set(stages)
    operator = "\n".join(stages["operator"])
    # A passwd entry for the uid the chart runs as (kopf calls getpass.getuser()).
    assert re.search(r"useradd .*--uid 10001", operator)
    assert "USER 10001:10001" in operator
    assert 'ENTRYPOINT ["graft", "operator"]' in operator
    assert "USER 1000:1000" in "\n".join(stages["trainer"])


def test_final_images_copy_only_the_venv():
    """Build tools (the build venv, setuptools, the source tree) stay in the build stages."""
    for target in ("operator", "trainer"):
        body = "\n".join(_stages()[target])
        copies = re.findall(r"^COPY .*$", body, flags=re.M)
        assert copies
        assert all(c.startswith("COPY --from=build-") and c.endswith("/opt/graft /opt/graft") for c in copies)
        assert "pip install" not in body


def test_pins():
    text = DOCKERFILE.read_text()
    base = re.search(r"ARG BASE_IMAGE=(\S+)", text).group(1)
    assert re.search(r":\d+\.\d+\.\d+-", base), f"base image {base} is not pinned to a patch release"
    for line in re.findall(r"pip install [^\n]*", text):
        assert "--no-deps" in line or "==" in line, line
