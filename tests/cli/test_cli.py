"""`graft validate`, `graft crd` and `graft status` as a user runs them: real subprocesses."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.committed import COMMITTED_CRD

from graft.api.models import StageState
from graft.ledger import Ledger, TrackingRecord

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
GOOD = EXAMPLES[0].read_text()


def graft(*args: str, stdin: str | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    # As from a shell into a pipe: pytest exports COLUMNS=80, which a user's pipe does not have.
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run(
        [sys.executable, "-m", "graft.cli", *args], input=stdin, capture_output=True, text=True, cwd=cwd, timeout=60,
        env=env,
    )


def test_validate_examples_exit_zero():
    proc = graft("validate", *map(str, EXAMPLES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == ""


def test_validate_stdin():
    assert graft("validate", "-", stdin=GOOD).returncode == 0
    bad = graft("validate", "-", stdin=GOOD.replace("numClasses: 10\n  data", "numClasses: 1\n  data"))
    assert bad.returncode == 1
    assert bad.stdout.splitlines() == ["(stdin): spec.model.numClasses: must be greater than or equal to 2 (got 1)"]


def test_validate_multi_document_numbers_documents(tmp_path):
    f = tmp_path / "all.yaml"
    f.write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n---\n" + GOOD + "---\n" + GOOD.replace(
        "replicas: 2", "replicas: 0"))
    proc = graft("validate", str(f))
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        f"{f}[0]: kind: not a TransferJob (a Secret); expected kind 'TransferJob'",
        f"{f}[2]: spec.workers.replicas: must be greater than or equal to 1 (got 0)",
    ]


def test_validate_mixed_files_reports_each_and_fails(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"apiVersion": "graft.dev/v1alpha1", "kind": "TransferJob", "metadata": {"name": "x"}}))
    proc = graft("validate", str(EXAMPLES[0]), str(bad), str(tmp_path / "absent.yaml"))
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        f"{bad}: spec: required field is missing",
        f"{tmp_path / 'absent.yaml'}: (file): cannot read: No such file or directory",
    ]
    assert "2 of 3 file(s) invalid" in proc.stderr


NO_STORAGE = GOOD  # the local example: `graft run` needs no storage, a cluster does
LOCAL_PATHS = GOOD.replace("train: builtin:digits-noisy", "train: /data/digits/train").replace(
    "  workers:", "  storage:\n    uri: file:///var/graft\n  workers:")
STORAGE_REQUIRED = "spec.storage: required on a cluster: the stages hand checkpoints and the ledger to each other"
LOCAL = "a local path: on a cluster it is each pod's own filesystem"


def test_validate_cluster_refuses_what_render_refuses(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(NO_STORAGE)
    assert graft("validate", str(job)).returncode == 0  # valid for `graft run` on one machine
    proc = graft("validate", "--cluster", str(job))
    assert proc.returncode == 1
    [line] = proc.stdout.splitlines()
    assert line.startswith(f"{job}: {STORAGE_REQUIRED}")
    render = graft("render", str(job))
    assert render.returncode == 1 and render.stdout == ""
    assert line in render.stderr.splitlines()  # one rule, word for word


def test_validate_cluster_warns_about_local_paths_as_render_does(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(LOCAL_PATHS)
    assert graft("validate", str(job)).stdout == ""
    proc = graft("validate", "--cluster", str(job))
    assert proc.returncode == 0, proc.stdout + proc.stderr  # warnings do not fail: a shared volume can be mounted
    lines = proc.stdout.splitlines()
    assert [line.split(": ")[:3] for line in lines] == [
        [str(job), "warning", "spec.storage.uri"],
        [str(job), "warning", "spec.data.train"],
    ]
    assert all(LOCAL in line and line.endswith("use s3://") for line in lines), lines
    assert "1 file(s) valid for a cluster" in proc.stderr
    render = graft("render", str(job))
    assert render.returncode == 0
    assert [line for line in render.stderr.splitlines() if ": warning: " in line] == lines


def test_validate_cluster_numbers_documents_and_keeps_schema_errors_first(tmp_path):
    f = tmp_path / "all.yaml"
    f.write_text(NO_STORAGE + "---\n" + LOCAL_PATHS.replace("replicas: 2", "replicas: 0") + "---\n" + LOCAL_PATHS)
    proc = graft("validate", "--cluster", str(f))
    assert proc.returncode == 1
    assert [line.split(": ")[:3] for line in proc.stdout.splitlines()] == [
        [f"{f}[0]", "spec.storage", "required on a cluster"],
        [f"{f}[1]", "spec.workers.replicas", "must be greater than or equal to 1 (got 0)"],
        [f"{f}[2]", "warning", "spec.storage.uri"],
        [f"{f}[2]", "warning", "spec.data.train"],
    ]


def test_validate_needs_a_file():
    assert graft("validate").returncode == 2


def test_crd_prints_the_committed_crd():
    proc = graft("crd")
    assert proc.returncode == 0
    assert proc.stdout == COMMITTED_CRD.read_text()


def test_status_prints_a_ledger(tmp_path):
    led = Ledger.create("uid-7", "digits", ["FrozenFeatures", "Head"])
    led.stages[0].state = StageState.SUCCEEDED
    led.stages[1].state = StageState.FAILED
    led.stages[1].message = "out of memory"
    led.stages[1].metrics = {"val_accuracy": 0.8125}
    led.save(str(tmp_path))
    table = graft("status", str(tmp_path))
    assert table.returncode == 0, table.stderr
    assert "digits" in table.stdout and "1/2" in table.stdout and "val_accuracy=0.8125" in table.stdout
    assert "failed: Head: out of memory" in table.stdout
    as_json = json.loads(graft("status", str(tmp_path), "-o", "json").stdout)
    assert as_json["job_uid"] == "uid-7" and as_json["stages"][1]["state"] == "Failed"


@pytest.mark.parametrize(("record", "line"), [
    pytest.param({"state": "Succeeded", "tracking_uri": "http://mlflow:5000", "run_id": "9f2c", "registered_model":
                  "flowers", "model_version": "4"},
                 "mlflow: run 9f2c at http://mlflow:5000, model flowers version 4", id="run-and-version"),
    pytest.param({"state": "Failed", "tracking_uri": "http://mlflow:5000", "run_id": "9f2c",
                  "message": "tracking failed: MLflow at http://mlflow:5000 did not answer"},
                 "mlflow: tracking failed: MLflow at http://mlflow:5000 did not answer", id="tracking-failed"),
])
def test_status_shows_the_mlflow_run_and_model_version(tmp_path, record, line):
    led = Ledger.create("uid-8", "digits", ["FrozenFeatures"])
    led.tracking = TrackingRecord(**record)
    led.save(str(tmp_path))
    proc = graft("status", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert line in proc.stdout.splitlines()


def test_status_on_a_folder_without_ledger(tmp_path):
    proc = graft("status", str(tmp_path))
    assert proc.returncode == 1
    assert f"{tmp_path}: no ledger.json here" in proc.stderr


def test_status_on_a_folder_of_runs_lists_them(tmp_path):
    done = Ledger.create("uid-1", "digits", ["Head", "FullFineTune"])
    for stage, accuracy in zip(done.stages, (0.36, 0.41), strict=True):
        stage.state, stage.metrics = StageState.SUCCEEDED, {"val_accuracy": accuracy}
    done.save(str(tmp_path / "digits"))
    broken = Ledger.create("uid-2", "shapes", ["Head", "FullFineTune"])
    broken.stages[0].state = StageState.FAILED
    broken.save(str(tmp_path / "shapes"))
    (tmp_path / "not-a-run").mkdir()
    table = graft("status", str(tmp_path))
    assert table.returncode == 0, table.stderr
    lines = [line.split() for line in table.stdout.splitlines()]
    assert [words[:-1] for words in lines] == [
        ["RUN", "STATE", "STAGES", "BEST"],
        ["digits", "Succeeded", "2/2", "val_accuracy=0.41", "(FullFineTune)"],
        ["shapes", "Failed", "0/2"],
    ]
    assert all(re.fullmatch(r"\d+s", words[-1]) for words in lines[1:]), lines
    rows = json.loads(graft("status", str(tmp_path), "-o", "json").stdout)
    assert [(r["run"], r["state"], r["best"]) for r in rows] == [
        ("digits", "Succeeded", "val_accuracy=0.41 (FullFineTune)"), ("shapes", "Failed", "")]


def test_piped_status_keeps_long_uris_whole_and_plain(tmp_path):
    """grep must find a whole checkpoint URI in piped output: no folding at any width, no ANSI codes."""
    uri = "s3://a-bucket/" + "/".join(f"segment-{i:02d}" for i in range(30)) + "/checkpoint_000042"
    led = Ledger.create("uid-8", "long", ["Head"])
    led.stages[0].state, led.stages[0].checkpoint = StageState.SUCCEEDED, uri
    led.save(str(tmp_path))
    proc = graft("status", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert any(uri in line for line in proc.stdout.splitlines()), proc.stdout
    assert "\x1b[" not in proc.stdout


def test_status_points_at_the_inference_service_of_a_served_model(tmp_path):
    led = Ledger.create("uid-9", "digits", ["FrozenFeatures"])
    model = tmp_path / "model"
    led.model_uri = str(model)
    led.save(str(tmp_path))
    model.mkdir()
    (model / "model.json").write_text(json.dumps({"labels": ["a"]}))  # before serving support: no line
    assert not [line for line in graft("status", str(tmp_path)).stdout.splitlines() if "inference service" in line]
    manifest = f"{model}/inferenceservice.yaml"
    (model / "model.json").write_text(json.dumps({"labels": ["a"], "serving": {"inferenceServiceUri": manifest}}))
    proc = graft("status", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert (f"inference service: {manifest}   (kubectl apply -f it; locally: graft serve {model})"
            in proc.stdout.splitlines())
