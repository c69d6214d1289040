"""Where a stage's time went (issue 23): every stage's `timing` in the ledger, shown by `graft status -o json` and in
one line per stage by `graft status`: the parts add up to the attempt's time, and each part a stage has is there. In
process (fast) and on real Ray (Ray's start, Ray Train's worker group start-up and teardown, the Ray Data pool's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.trainer_data import NO_SERVING, SMOKE_CHECKS, job_doc, write_job, write_png
from typer.testing import CliRunner

from graft.api.models import TransferJob
from graft.cli import app
from graft_trainer import data as data_mod
from graft_trainer.driver import Driver
from graft_trainer.executors import LocalExecutor, features_in_driver
from graft_trainer.stages import StageConfig

GRAFT = str(Path(sys.executable).with_name("graft"))
SPEC = {
    "model": {"backbone": "smallcnn", "numClasses": 10},
    "data": {"train": "builtin:digits-noisy", "imageSize": 8, "shotsPerClass": 2},
    "stages": [
        {"type": "Pretrain", "data": "builtin:digits-clean", "numClasses": 10, "epochs": 2, "batchSize": 64},
        {"type": "FrozenFeatures"},
        {"type": "Head", "epochs": 3},
        {"type": "FullFineTune", "epochs": 2, "batchSize": 16, "augment": False},
    ],
    "workers": {"replicas": 2, "cpus": "1"},
    "checks": SMOKE_CHECKS,
    "serving": NO_SERVING,
}
#: The parts each stage must have (more may be there: a part under 0.5 ms can round to 0).
IN_PROCESS = {"data", "compute", "checkpoint", "driver"}
LOCAL = {"Pretrain": IN_PROCESS, "FrozenFeatures": {"data", "compute", "checkpoint"}, "Head": IN_PROCESS,
         "FullFineTune": IN_PROCESS}
RAY_TRAIN = {"startup", "data", "compute", "checkpoint", "teardown", "driver"}
ON_RAY = {"Pretrain": RAY_TRAIN | {"ray_init"}, "FrozenFeatures": {"startup", "compute", "checkpoint"},
          "Head": LOCAL["Head"], "FullFineTune": RAY_TRAIN}


def _status_json(root: str) -> dict:
    shown = CliRunner().invoke(app, ["status", root, "-o", "json"])
    assert shown.exit_code == 0, shown.output
    return json.loads(shown.output)


def _check(doc: dict, expected: dict[str, set[str]]) -> None:
    """Every stage's parts: the expected ones present and above zero, none unknown, adding up to its seconds."""
    for stage in doc["stages"]:
        parts = stage["timing"]
        present = {k for k, v in parts.items() if v > 0}
        assert expected[stage["type"]] <= present, (stage["type"], parts)
        assert set(parts) <= {"ray_init", "startup", "data", "compute", "checkpoint", "teardown", "driver"}, parts
        # The stage ran once: its seconds are this attempt's, and the parts (rounded to ms) account for all of it.
        assert sum(parts.values()) == pytest.approx(stage["seconds"], abs=0.01), (stage["type"], parts)


def test_each_stage_s_time_is_broken_down_in_the_ledger_and_graft_status(tmp_path, one_thread):
    job = TransferJob.model_validate(job_doc("timed", SPEC))
    ledger = Driver(job, str(tmp_path), executor=LocalExecutor()).run()
    root = str(tmp_path / "timed")
    assert ledger.stage("Pretrain").timing
    _check(_status_json(root), LOCAL)
    table = CliRunner().invoke(app, ["status", root], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    for stage in LOCAL:
        assert f"{stage}: time " in table.output and "compute " in table.output


@pytest.mark.slow
def test_on_ray_the_worker_group_s_start_up_and_teardown_are_measured(tmp_path):
    """`graft run` on local Ray (2 gloo workers, a Ray Data actor pool): Ray's start in the first stage, Ray Train's
    start-up and teardown in both training stages, the actor pool's start-up in FrozenFeatures."""
    spec = {**SPEC, "stages": [{**s, "actors": 2} if s["type"] == "FrozenFeatures" else s for s in SPEC["stages"]]}
    job = write_job(tmp_path / "job.json", job_doc("timed", spec))
    done = subprocess.run([GRAFT, "run", str(job), "--storage", str(tmp_path / "runs")], capture_output=True,
                          text=True, timeout=540, cwd=tmp_path)  # under pytest-timeout's 600 s; idle: about 1 min
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    _check(_status_json(str(tmp_path / "runs" / "timed")), ON_RAY)


@pytest.mark.parametrize(("change", "in_driver"), [
    ({}, True),
    ({"stages": [{"type": "FrozenFeatures", "actors": 2}]}, False),
    ({"workers": {"replicas": 2, "gpus": 1}}, False),
    ({"workers": {"replicas": 2, "memory": "64Ki"}}, False),
    ({"data": {"train": "FOLDER", "imageSize": 8}}, False),
], ids=["built-in-set", "actors-asked", "gpus-asked", "over-the-budget", "image-files"])
def test_frozen_features_run_in_the_driver_only_for_small_in_memory_sets(tmp_path, change, in_driver):
    """The Ray Data actor pool's start-up took seconds for the demo's milliseconds of work: small built-in sets are run
    through the backbone in the driver; files to read and decode, a GPU, or an explicit `actors` keep the pool."""
    for label in ("0", "1"):
        write_png(tmp_path / "images" / label / "a.png", 40)
    spec = {"model": {"backbone": "smallcnn", "numClasses": 2, "weights": "w.pt"},
            "data": {"train": "builtin:digits", "imageSize": 8}, "stages": [{"type": "FrozenFeatures"}], **change}
    spec["data"]["train"] = spec["data"]["train"].replace("FOLDER", str(tmp_path / "images"))
    job = TransferJob.model_validate(job_doc("features", spec))
    sets = {"train": data_mod.open_source(job.spec.data.train)}
    assert features_in_driver(StageConfig(job.spec, 0), sets) is in_driver
