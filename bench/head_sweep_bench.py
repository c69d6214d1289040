"""Head stage wall time on the demo (examples/digits-lpft.yaml): the new default (a sweep of 32 heads, batched, in
the driver's process, early stopping) against the Head as it ran before (one head, 100 epochs, a Ray Train run
with the demo's 2 workers) and against Ray Tune (one trial per setting), all measured in the same run on the
same stored features.

  RAY_TMPDIR=/tmp/ray-bench .venv/bin/python bench/head_sweep_bench.py          # about 3 minutes here
  RAY_TMPDIR=/tmp/ray-bench .venv/bin/python bench/head_sweep_bench.py --no-tune

The demo's Pretrain and FrozenFeatures run first through the driver (on local Ray, as `graft run` does); then:
(a) the Head stage as the demo runs it now, timed as the driver records it (ledger `seconds`);
(b) one pinned head (lr 0.01, weight decay 1e-4, no smoothing, no early stopping: the demo's old Head) through
    the Ray Train path, 2 workers (`RayExecutor.fit`), as every Head ran before;
(c) Ray Tune: the same 32 settings, one trial each (each trial the single-setting loop in-process).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

from graft.api.models import TransferJob
from graft_trainer import sweep
from graft_trainer.driver import Driver
from graft_trainer.executors import RayExecutor
from graft_trainer.session import LocalSession
from graft_trainer.stages import StageConfig, run_name

REPO = Path(__file__).resolve().parents[1]
PINNED = {"lr": 0.01, "weightDecay": 1e-4, "labelSmoothing": 0.0, "patience": None}


def _demo(name: str, stages: list[dict]) -> TransferJob:
    doc = yaml.safe_load((REPO / "examples" / "digits-lpft.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["stages"] = stages
    return TransferJob.model_validate(doc)


def _tune(features: str, stages: list[dict]) -> float:
    """Wall time of a Ray Tune run with one trial per setting of the default grid (1 CPU each, on local Ray)."""
    from ray import tune

    grid = _demo("tune", stages).spec.stages[2].grid()

    def trial(config):
        setting = grid[config["setting"]]
        pinned = {**stages[2], "lr": setting["lr"], "weightDecay": setting["weight_decay"],
                  "labelSmoothing": setting["label_smoothing"]}
        spec = _demo("tune", [*stages[:2], pinned]).spec
        session = LocalSession()
        sweep.train_head(session, StageConfig(spec, 2, features=features))
        return {"val_accuracy": session.state["table"][0]["val_accuracy"]}

    t0 = time.perf_counter()
    tuner = tune.Tuner(
        tune.with_resources(trial, {"cpu": 1}),
        param_space={"setting": tune.grid_search(list(range(len(grid))))},
        tune_config=tune.TuneConfig(metric="val_accuracy", mode="max"),
        run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(prefix="graft-tune-"), verbose=0),
    )
    tuner.fit()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-tune", action="store_true", help="leave out (c) Ray Tune")
    args = parser.parse_args()
    store = tempfile.mkdtemp(prefix="graft-headbench-")
    demo = yaml.safe_load((REPO / "examples" / "digits-lpft.yaml").read_text())
    stages = demo["spec"]["stages"][:3]

    job = _demo("head-bench", stages)
    ledger = Driver(job, store, log_to_driver=False).run()
    head = ledger.stage("Head")
    out: dict = {"new_default_s": head.seconds, "settings": len(head.sweep or []), "stop": head.stop,
                 "new_val_accuracy": head.metrics["val_accuracy"]}

    # (b) the old Head: one setting, the Ray Train worker group, same features (same Ray already up).
    old_stages = copy.deepcopy(stages)
    old_stages[2].update(PINNED)
    old = _demo("head-bench", old_stages)
    features = ledger.stage("FrozenFeatures").output
    root = os.path.join(store, "head-bench")
    cfg = StageConfig(old.spec, 2, root, run_name("head-bench", "Head", 99), features=features)
    t0 = time.perf_counter()
    state, _ = RayExecutor(log_to_driver=False).fit(sweep.train_head, cfg, 2)
    out["old_single_head_s"] = time.perf_counter() - t0
    out["old_val_accuracy"] = state["table"][0]["val_accuracy"]
    out["speedup_vs_old"] = out["old_single_head_s"] / out["new_default_s"]
    if not args.no_tune:
        out["ray_tune_s"] = _tune(features, stages)
        out["speedup_vs_tune"] = out["ray_tune_s"] / out["new_default_s"]
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
