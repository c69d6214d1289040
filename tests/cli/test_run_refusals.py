"""`graft run` as a user runs it (a subprocess) where it stops before any Ray run: a rerun whose spec changed
(exit 2, the changed fields and both ways out) and bad input of a later stage (exit 1, before Pretrain)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support.trainer_data import NO_SERVING, SMOKE_CHECKS

from graft.api.models import StageState, TransferJob
from graft.ledger import Ledger

ROOT = Path(__file__).resolve().parents[2]
SPEC = {
    "model": {"backbone": "smallcnn", "numClasses": 10},
    "data": {"train": "builtin:digits-noisy", "imageSize": 8, "shotsPerClass": 2},
    "stages": [
        {"type": "Pretrain", "data": "builtin:digits-clean", "numClasses": 10, "epochs": 1, "batchSize": 128},
        {"type": "FrozenFeatures"},
        {"type": "Head", "epochs": 2},
        {"type": "FullFineTune", "epochs": 1, "lr": 0.003},
    ],
    "checks": SMOKE_CHECKS,
    "serving": NO_SERVING,
}


def _manifest(path: Path, spec: dict) -> Path:
    doc = {"apiVersion": "graft.dev/v1alpha1", "kind": "TransferJob", "metadata": {"name": "digits"}, "spec": spec}
    path.write_text(json.dumps(doc))
    return path


def graft_run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run([sys.executable, "-m", "graft.cli", "run", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120, env=env)


def test_a_rerun_with_a_changed_spec_exits_2_naming_the_changes_and_the_ways_out(tmp_path):
    from graft_trainer.driver import Driver
    from graft_trainer.executors import LocalExecutor

    job = TransferJob.model_validate(json.loads(_manifest(tmp_path / "job.json", SPEC).read_text()))
    Driver(job, str(tmp_path / "runs"), executor=LocalExecutor()).run()
    before = (tmp_path / "runs" / "digits" / "ledger.json").read_bytes()

    changed = json.loads(json.dumps(SPEC))
    changed["stages"][3].update(epochs=2, lr=0.01)
    _manifest(tmp_path / "job.json", changed)
    proc = graft_run("job.json", "--storage", "runs", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr
    assert "spec.stages[3].epochs: 1 -> 2" in err and "spec.stages[3].lr: 0.003 -> 0.01" in err
    assert "stage FullFineTune (4 of 4)" in err
    assert "graft run job.json --from-stage FullFineTune" in err and "graft run job.json --restart" in err
    assert "Succeeded" not in proc.stdout
    assert (tmp_path / "runs" / "digits" / "ledger.json").read_bytes() == before

    proc = graft_run("job.json", "--storage", "runs", "--from-stage", "Fine", cwd=tmp_path)
    assert proc.returncode == 2
    assert "--from-stage: 'Fine' is not a stage of this job" in proc.stderr


def test_a_wrong_num_classes_fails_before_pretrain_runs(tmp_path):
    spec = json.loads(json.dumps(SPEC))
    spec["model"]["numClasses"] = 5
    _manifest(tmp_path / "job.json", spec)
    proc = graft_run("job.json", "--storage", "runs", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "has 10 classes" in proc.stdout and "spec.model.numClasses is 5" in proc.stdout
    assert (proc.stdout + proc.stderr).count("spec.model.numClasses is 5") == 1  # said once, not logged and printed
    ledger = Ledger.load(str(tmp_path / "runs" / "digits"))
    assert [s.state for s in ledger.stages] == [StageState.PENDING, StageState.FAILED, StageState.PENDING,
                                                StageState.PENDING]


def test_a_failure_naming_a_path_with_brackets_prints_the_path_as_it_is(tmp_path):
    from support.trainer_data import write_png

    folder = tmp_path / "data[red]"  # rich would read "[red]" as markup and drop it
    for c in ("a", "b", "c"):
        write_png(folder / c / "0.png", 100, size=8)
    spec = {"model": {"backbone": "smallcnn", "numClasses": 5}, "data": {"train": str(folder), "imageSize": 8},
            "stages": [{"type": "Pretrain", "data": str(folder), "numClasses": 5, "epochs": 1}]}
    _manifest(tmp_path / "job.json", spec)
    proc = graft_run("job.json", "--storage", "runs", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{folder}: has 3 classes" in proc.stdout, proc.stdout
