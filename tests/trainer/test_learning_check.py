"""Not learning is a finding, not a success (issue 27, part 1): after each training stage, its validation accuracy
is tested against chance and its training loss against its start (`graft_trainer/learning.py`). A stage that learned
nothing fails the job before the export (the default), or, with `action: Warn`, the export carries the finding."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.trainer_data import job_doc

from graft import storage
from graft.api.models import LearningCheck, StageState, TransferJob
from graft.ledger import Ledger
from graft_trainer import data as data_mod
from graft_trainer import learning
from graft_trainer.driver import Driver, StageFailed
from graft_trainer.executors import LocalExecutor

TEN = np.repeat(np.arange(10), 20)  # 200 validation labels, 10 balanced classes
SKEWED = np.array([0] * 140 + [1] * 60)  # 70% one class: chance is 0.7, not 0.5
LEARNED_LOSS = [2.2, 1.4, 0.9]
GRAFT = str(Path(sys.executable).with_name("graft"))


def _ev(acc, labels=TEN, classes=10, candidates=1, losses=LEARNED_LOSS):
    return learning.Evidence(acc, labels, classes, candidates, losses)


@pytest.mark.parametrize(("evidence", "finding", "words"), [
    (_ev(0.55), False, "validation accuracy 0.550 on 200 images"),
    (_ev(0.11), True, "against chance 0.100 (1/10)"),
    # 0.72 is well above 1/2, but not above always answering the larger class (0.70)
    (_ev(0.72, SKEWED, 2), True, "chance 0.700 (the largest class's share 0.700)"),
    (_ev(0.90, SKEWED, 2), False, "chance 0.700"),
    # 0.16 passes alone; as the best of 3,200 validation scores it is what chance gives
    (_ev(0.16), False, "level 0.05"),
    (_ev(0.16, candidates=3200), True, "best of 3200 validation scores"),
    # the loss stands in for the accuracy only where the split is too small to tell
    (_ev(0.5, labels=TEN[:4:2], losses=[2.31, 2.30, 2.30]), True, "training loss 2.310 -> 2.300 (at most 2.079"),
    (_ev(0.9, losses=[2.31, 2.30, 2.30]), False, "training loss 2.310 -> 2.300"),
    (_ev(0.11, losses=[2.31, 2.30]), True, "chance 0.100 (1/10); training loss 2.310 -> 2.300"),
    # the start is at least ln(C): a first epoch that already learned most does not make the drop look small
    (_ev(0.5, labels=TEN[:4:2], losses=[0.8, 0.7]), False, "training loss 0.800 -> 0.700"),
    (_ev(0.5, labels=TEN[:4:2], losses=[2.0, float("nan")]), True, "training loss not finite"),
    (_ev(0.0, labels=TEN[:4:2]), False, "accuracy not judged: 2 validation images"),
], ids=["learned", "chance", "majority-class", "above-majority", "one-score", "best-of-many", "flat-loss-small-split",
        "flat-loss-but-accurate", "chance-and-flat-loss", "loss-from-ln-c", "nan-loss", "too-few-to-tell"])
def test_the_verdict_on_what_a_stage_measured(evidence, finding, words):
    verdict = learning.judge(evidence, LearningCheck())
    assert words in verdict.line
    assert (verdict.finding is not None) == finding, verdict.line
    if finding:
        assert verdict.finding["kind"] == "NotLearning" and verdict.finding["message"].startswith("did not learn: ")


def _pretrain_job(name: str, data: str, lr: float, checks: dict | None = None) -> TransferJob:
    spec = {"model": {"backbone": "smallcnn", "numClasses": 10}, "data": {"train": "builtin:digits-noisy",
                                                                          "imageSize": 8},
            "stages": [{"type": "Pretrain", "data": data, "numClasses": 10, "epochs": 3, "batchSize": 64, "lr": lr}]}
    if checks:
        spec["checks"] = checks
    return TransferJob.model_validate(job_doc(name, spec))


def _shuffled_digits(root) -> str:
    """The clean digits as an ImageFolder whose labels are a random permutation of the true ones: nothing to learn."""
    src = data_mod.open_source("builtin:digits-clean")
    labels = np.random.RandomState(0).permutation(src.labels)
    for i, (pixels, label) in enumerate(zip(src.pixels, labels, strict=True)):
        path = root / str(label) / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((pixels[0] * 255).clip(0, 255).astype(np.uint8)).save(path)
    return str(root)


def test_a_pretrain_on_shuffled_labels_fails_before_the_export_with_the_finding(tmp_path, one_thread):
    job = _pretrain_job("shuffled", _shuffled_digits(tmp_path / "shuffled"), 0.05)
    root = str(tmp_path / "runs")
    with pytest.raises(StageFailed, match="did not learn: validation accuracy"):
        Driver(job, root, executor=LocalExecutor()).run()
    ledger = Ledger.load(storage.join(root, "shuffled"))
    rec = ledger.stage("Pretrain")
    assert rec.state == StageState.FAILED and rec.finding["kind"] == "NotLearning"
    assert rec.message == rec.finding["message"] and "against chance" in rec.learning
    assert ledger.model_uri is None and not storage.exists(storage.join(root, "shuffled", "model", "model.json"))
    status = ledger.to_status()["stages"][0]
    assert status["finding"] == rec.finding


def test_with_warn_a_stage_that_learned_nothing_goes_on_and_its_export_says_so(tmp_path, one_thread):
    # lr 1e-8: the weights stay where they started, so the loss stays at ln(10) and the accuracy at chance.
    job = _pretrain_job("frozen", "builtin:digits-clean", 1e-8, {"learning": {"action": "Warn"}})
    ledger = Driver(job, str(tmp_path / "runs"), executor=LocalExecutor()).run()
    rec = ledger.stage("Pretrain")
    assert rec.state == StageState.SUCCEEDED and rec.finding["kind"] == "NotLearning"
    assert "training loss" in rec.finding["message"]
    meta = storage.read_json(storage.join(ledger.model_uri, "model.json"))
    assert meta["findings"] == {"Pretrain": rec.finding["message"]}
    assert ledger.export["warning"].startswith("stage Pretrain did not learn: ")


@pytest.mark.slow
def test_graft_run_of_a_job_that_learns_nothing_exits_non_zero_and_says_why(tmp_path, shared_ray):
    # A from-scratch network whose learning rate (1e-8) leaves it where it started, on Ray's two workers as a user's
    # `graft run` has it; the FullFineTune after it never starts, and nothing is exported. `graft run` joins the
    # session's Ray cluster (RAY_ADDRESS, as in a RayJob): the finding is Graft's, not Ray's start-up's.
    doc = job_doc("learns-nothing", {
        "model": {"backbone": "smallcnn", "numClasses": 10},
        "data": {"train": "builtin:digits-noisy", "imageSize": 8, "shotsPerClass": 5},
        "stages": [{"type": "Pretrain", "data": "builtin:digits-clean", "numClasses": 10, "epochs": 2, "lr": 1e-8},
                   {"type": "FullFineTune", "epochs": 2}],
        "workers": {"replicas": 2, "cpus": "1", "memory": "2Gi"},
    })
    manifest = tmp_path / "job.yaml"
    manifest.write_text(json.dumps(doc))
    done = subprocess.run([GRAFT, "run", str(manifest), "--storage", "runs"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=400)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]
    assert re.search(r"^Pretrain did not learn: validation accuracy 0\.\d+ on \d+ images", done.stdout, re.M), out
    assert "error: stage Pretrain failed: did not learn: " in out
    ledger = Ledger.load(str(tmp_path / "runs" / "learns-nothing"))
    assert ledger.stage("Pretrain").finding["kind"] == "NotLearning"
    assert ledger.stage("FullFineTune").state == StageState.PENDING and ledger.model_uri is None
