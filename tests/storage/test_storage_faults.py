"""Storage faults are retried within a budget: a flaky S3 (503s and resets through a proxy in front of moto), a
silent endpoint (accepts, never answers), read-only and full local storage. Each ends in the job finishing or in
one line naming the operation, the object and the endpoint or path."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support.flaky_s3 import flaky_s3
from support.s3 import TEST_CREDENTIALS, hung_endpoint

from graft import storage
from graft.ledger import Ledger

REPO = Path(__file__).resolve().parents[2]


def test_a_flaky_endpoint_is_retried_until_every_write_and_read_succeeds(s3_bucket, s3_endpoint, monkeypatch, budget):
    budget(60)
    root = s3_bucket + "/job"
    with flaky_s3(s3_endpoint, fail=0.3, reset=0.05, seed=1) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        ledger = Ledger.create("job", "job", ["Head"])
        for epoch in range(1, 21):
            ledger.stages[0].epoch = epoch
            ledger.save(root)
            assert Ledger.load(root).stages[0].epoch == epoch
    assert proxy.failed + proxy.reset >= 10, f"the proxy injected only {proxy.failed} 503s and {proxy.reset} resets"


def test_a_silent_endpoint_is_reported_within_10s_and_fails_naming_it_after_the_budget(monkeypatch, caplog, budget):
    budget(12)
    with hung_endpoint() as hung, caplog.at_level(logging.WARNING, logger="graft.storage"):
        monkeypatch.setenv("AWS_ENDPOINT_URL", hung.url)
        started = time.time()
        with pytest.raises(storage.StorageError) as info:
            storage.read_bytes("s3://graft-silent/job/ledger.json")
    message = str(info.value)
    assert message.startswith("s3://graft-silent/job/ledger.json: read failed at " + hung.url), message
    assert "spec.storage.retrySeconds: 12" in message
    silent = [r for r in caplog.records if "no answer from " + hung.url in r.getMessage()]
    assert silent, [r.getMessage() for r in caplog.records]
    assert silent[0].created - started <= storage.WARN_AFTER_S + 1.0, "the silent endpoint was reported late"


def _job(tmp_path: Path, storage_spec: dict) -> Path:
    job = yaml.safe_load((REPO / "examples" / "digits-lpft.yaml").read_text())
    job["spec"]["storage"] = storage_spec
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_graft_run_against_a_silent_endpoint_says_so_and_exits_1(tmp_path):
    with hung_endpoint() as hung:
        job = _job(tmp_path, {"uri": "s3://graft-silent", "endpoint": hung.url, "retrySeconds": 12})
        env = {**os.environ, **TEST_CREDENTIALS}  # keys, as a pod gets them: the endpoint is what fails
        done = subprocess.run([sys.executable, "-m", "graft.cli", "run", str(job)], capture_output=True, text=True,
                              timeout=180, cwd=tmp_path, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"failed at {hung.url} after" in errors[0], done.stderr
    assert "s of retries (spec.storage.retrySeconds: 12)" in errors[0], errors[0]
    assert "Traceback" not in done.stderr
    assert f"no answer from {hung.url} for 10 s" in done.stderr


def _mounted(tmp_path: Path, options: str) -> list[str]:
    """A command prefix running what follows in its own mount namespace with a small tmpfs at `tmp_path/store`
    (`options`: "ro" for read-only storage, "size=..." for a full one). Needs root, as CI and the dev machines run."""
    store = tmp_path / "store"
    store.mkdir()
    script = 'mount -t tmpfs -o "$1" graft-test "$2" && shift 2 && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", options, str(store)]


# `graft run` in a process; the full store first gets a file that leaves it less room than the ledger needs.
_RUN = "import sys; from graft.cli import main; sys.argv = ['graft', 'run', sys.argv[2]]; main()"
_FILL = "from graft import storage; storage.write_bytes(sys.argv[1] + '/filler', bytes(60 * 1024)); "


@pytest.mark.parametrize(("options", "cause", "code"), [("ro,size=1m", "read-only storage", _RUN),
                                                         ("size=64k", "storage full", _FILL + _RUN)],
                         ids=["read-only", "full"])
def test_read_only_or_full_local_storage_is_one_line_naming_the_path(tmp_path, options, cause, code):
    job = _job(tmp_path, {"uri": str(tmp_path / "store")})
    code = "import sys; " + code
    done = subprocess.run([*_mounted(tmp_path, options), sys.executable, "-c", code, str(tmp_path / "store"),
                           str(job)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    if done.returncode != 0 and "unshare" in done.stderr and "Operation not permitted" in done.stderr:
        pytest.skip("mount namespaces need root (CI and the dev machines run as root)")
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    assert str(tmp_path / "store") in errors[0] and cause in errors[0], errors[0]
    assert "Traceback" not in output


def test_the_filesystem_ray_train_is_given_keeps_its_retries_in_another_process(s3_bucket):
    """Ray Train pickles its storage filesystem into the controller and workers; pyarrow's own pickling drops the
    retry strategy, so the copy another process gets must be rebuilt from the same options."""
    import pickle

    _, fs = storage.ray_storage(s3_bucket + "/checkpoints")
    code = ("import pickle, sys; fs = pickle.load(sys.stdin.buffer); "
            "print(type(fs).__name__, fs.graft_options.max_attempts, fs.graft_options.retry_seconds)")
    done = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(fs), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == ["_S3FileSystem", str(storage.RAY_ATTEMPTS),
                                            f"{storage.DEFAULT_RETRY_SECONDS}"]
