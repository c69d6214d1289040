"""`graft run`'s piped output is Graft's own (issue 11, problem 4): no line from Ray's loggers or its C++ parts,
per-stage times, and a finished stage's metrics labelled as its best epoch's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support.trainer_data import NO_SERVING, SMOKE_CHECKS, smallcnn_weights

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
GRAFT = str(Path(sys.executable).with_name("graft"))
#: What Ray prints on its own: Python loggers ("2026-12-02 08:52:16,345\tINFO file.py:215 -- ..."), C++ logs
#: ("[2026-12-02 08:52:16,381 E 12174 12174] core_worker.cc:2465: ..."), forwarded worker output ("(pid=...)").
RAY_LINE = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+\s+(DEBUG|INFO|WARNING|ERROR)\s"
                      r"|^\[\d{4}-\d\d-\d\d [^]]* [IWEF] \d+ \d+\]"
                      r"|\((pid|raylet|RayTrainWorker|MapWorker)[^)]*\)")


def test_a_piped_run_prints_no_ray_line_and_labels_stage_times_and_best_epochs(tmp_path):
    # Its own Ray (not the session's cluster): what a starting Ray prints is part of what this checks.
    doc = yaml.safe_load((REPO / "examples" / "digits-lpft.yaml").read_text())
    # FrozenFeatures runs on a Ray Data actor pool (Ray Data's plan and progress lines, the core worker's
    # "constructor arguments in the object store" error line): `actors` asks for it, a built-in set would run in the
    # driver (executors.features_in_driver). Head's sweep then runs in the driver.
    doc["spec"]["stages"] = [{"type": "FrozenFeatures", "actors": 2}, {"type": "Head", "epochs": 4, "lr": 0.01}]
    doc["spec"]["model"]["weights"] = str(smallcnn_weights(tmp_path / "w.pt"))
    doc["spec"]["serving"] = NO_SERVING
    doc["spec"]["checks"] = SMOKE_CHECKS  # 4 epochs of heads on a random backbone's features learn next to nothing
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}  # pytest sets them: a pipe has none
    done = subprocess.run([GRAFT, "run", str(manifest), "--storage", "runs"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=400, env=env)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    ray_lines = [line for line in out.splitlines() if RAY_LINE.search(line)]
    assert not ray_lines, "\n".join(ray_lines)
    # Not a terminal: one plain line per epoch of each stage, each once, then the stage's end (issue 27, part 5).
    epochs = re.findall(r"^Head +epoch (\d)/4  train_loss=[\d.]+ val_accuracy=[\d.]+ val_loss=[\d.]+  \d+:\d\d$",
                        done.stdout, re.M)
    assert epochs == ["1", "2", "3", "4"], done.stdout
    assert re.search(r"^Head +succeeded in 0:\d\d: best epoch \d: val_accuracy=", done.stdout, re.M), done.stdout
    assert re.search(r"^FrozenFeatures +succeeded in 0:\d\d$", done.stdout, re.M), done.stdout
    progress = done.stdout.split("digits-lpft: 2/2 stages")[0]  # what came before the summary table
    assert "\x1b[" not in progress and "━" not in progress, progress  # no bars, no cursor movement
    assert (tmp_path / "runs" / "digits-lpft" / "ray.log").exists()  # where Ray's own output went
    assert "leakage" not in done.stdout  # the demo's splits share no image (test_leakage_run.py plants some)
    assert json.loads((tmp_path / "runs" / "digits-lpft" / "ledger.json").read_text())["leakage"] == []

    again = subprocess.run([GRAFT, "run", str(manifest), "--storage", "runs"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to do: all 2 stages already succeeded and the model is exported" in again.stdout, again.stdout
    assert "epoch" not in again.stdout.split("nothing to do")[0], again.stdout  # nothing ran, nothing was shown
