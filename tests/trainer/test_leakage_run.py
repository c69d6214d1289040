"""`graft run` checks the job's splits for shared images before its first stage (issue 27, part 3): what it finds is
kept in the ledger and said in the run's summary and in `graft status`; the demo's splits (test_quiet_run.py,
test_check_data.py) have none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support.trainer_data import NO_SERVING, SMOKE_CHECKS, job_doc, smallcnn_weights, write_job

GRAFT = str(Path(sys.executable).with_name("graft"))


def test_a_validation_set_that_is_the_training_set_is_said_and_kept(tmp_path):
    # Built-in data and an in-driver Head: no Ray is started.
    spec = {"model": {"backbone": "smallcnn", "numClasses": 10, "weights": str(smallcnn_weights(tmp_path / "w.pt"))},
            "data": {"train": "builtin:digits-noisy", "validation": "builtin:digits-noisy", "imageSize": 8,
                     "shotsPerClass": 5},
            "stages": [{"type": "FrozenFeatures"}, {"type": "Head", "epochs": 2}], "serving": NO_SERVING,
            "checks": SMOKE_CHECKS}  # 2 epochs of heads on a random backbone learn next to nothing
    manifest = write_job(tmp_path / "job.yaml", job_doc("leaky", spec))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    done = subprocess.run([GRAFT, "run", str(manifest), "--storage", "runs"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr  # a warning, not a failure
    said = [line for line in done.stdout.splitlines() if line.startswith("warning: leakage: ")]
    assert len(said) == 1 and "image(s) of the validation split are also in the train split" in said[0], done.stdout
    assert "(e.g. builtin:digits-noisy[" in said[0]
    ledger = json.loads((tmp_path / "runs" / "leaky" / "ledger.json").read_text())
    assert ledger["leakage"] == [said[0].removeprefix("warning: leakage: ")]
    status = subprocess.run([GRAFT, "status", "runs/leaky"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, env=env)
    assert said[0] in status.stdout.splitlines(), status.stdout
