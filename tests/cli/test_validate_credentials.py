"""`graft validate --cluster` on s3 storage with no way to credentials: a warning naming the field, unless a
credentials Secret or a service account (IRSA, Workload Identity) is named."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
JOB = yaml.safe_load((ROOT / "examples" / "digits-lpft.yaml").read_text())
S3 = {"uri": "s3://ml-checkpoints/graft"}
DEFAULT_CHAIN = "the pods will use whatever default credentials the node gives them"

CASES = [
    pytest.param({"storage": S3}, ["spec.storage.credentialsSecret"], id="s3-no-secret-no-account-warns"),
    pytest.param({"storage": {**S3, "endpoint": "http://minio.minio.svc:9000"}}, ["spec.storage.credentialsSecret"],
                 id="minio-no-secret-warns"),
    pytest.param({"storage": {**S3, "credentialsSecret": {"name": "graft-s3"}}}, [], id="secret-no-warning"),
    pytest.param({"storage": S3, "pod": {"serviceAccountName": "graft-irsa"}}, [], id="service-account-no-warning"),
    pytest.param({"storage": {"uri": "file:///var/graft"}}, ["spec.storage.uri"], id="local-storage-needs-no-keys"),
]


def _validate(tmp_path: Path, overrides: dict) -> subprocess.CompletedProcess[str]:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**JOB, "spec": {**JOB["spec"], **overrides}}))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run([sys.executable, "-m", "graft.cli", "validate", "--cluster", str(job)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, env=env)


@pytest.mark.parametrize(("overrides", "warned"), CASES)
def test_validate_cluster_warns_when_s3_has_no_credentials_secret_and_no_service_account(tmp_path, overrides,
                                                                                         warned):
    proc = _validate(tmp_path, overrides)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # a warning, not an error: a node role may be meant
    lines = proc.stdout.splitlines()
    assert [line.split(": ")[2] for line in lines] == warned, lines
    for line in lines:
        if "credentialsSecret" in line.split(": ")[2]:
            assert DEFAULT_CHAIN in line and "spec.pod.serviceAccountName" in line, line
