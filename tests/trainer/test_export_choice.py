"""The exported model is the best candidate by validation (LP or FullFineTune), never silently a worse one, and
model.json, the ledger and the run's summary say which and why."""

from __future__ import annotations

import pytest
from graft.trainer import data as data_mod
from graft.trainer import evaluate, scoring, selection
from graft.trainer.driver import Driver
from graft.trainer.executors import LocalExecutor
from support.trainer_data import job_doc, smallcnn_weights
from typer.testing import CliRunner

from graft import storage
from graft.api.models import TransferJob
from graft.cli import app
from graft.ledger import Ledger, StageRecord


def test_a_fine_tune_that_made_things_worse_is_not_exported(tmp_path, one_thread):
    weights = smallcnn_weights(tmp_path / "w.pt")
    spec = {
        "model": {"backbone": "smallcnn", "numClasses": 10, "weights": str(weights)},
        "data": {"train": "builtin:digits-noisy", "imageSize": 8, "shotsPerClass": 5, "testFraction": 0.2},
        # A learning rate of 5 wrecks the network: FullFineTune ends far below the linear probe.
        "stages": [{"type": "FrozenFeatures"}, {"type": "Head", "epochs": 30},
                   {"type": "FullFineTune", "epochs": 2, "batchSize": 16, "lr": 5.0, "backboneLrScale": 1.0,
                    "augment": False, "gradClipNorm": None}],
    }
    job = TransferJob.model_validate(job_doc("worse", spec))
    ledger = Driver(job, str(tmp_path / "runs"), executor=LocalExecutor()).run()
    lp, ft = ledger.stage("Head").metrics, ledger.stage("FullFineTune").metrics
    assert ft["val_accuracy"] < lp["val_accuracy"] - 0.1, (lp, ft)
    meta = storage.read_json(storage.join(ledger.model_uri, "model.json"))
    assert meta["selection"]["stage"] == "Head"
    assert meta["selection"]["reason"].startswith("LP (Head on the frozen backbone) has the best validation")
    assert [c["stage"] for c in meta["selection"]["candidates"]] == ["Head", "FullFineTune"]
    assert meta["metrics"]["val_accuracy"] == lp["val_accuracy"]
    # The exported weights are the LP model's: they score the Head's validation accuracy on the images.
    net, _ = evaluate.load_model(ledger.model_uri)
    _, val, _ = data_mod.target_sets(job.spec.data)
    again = scoring.metrics(scoring.network_logits(net, val, 8, meta["preprocessing"]), val.labels, "val")
    assert again["val_accuracy"] == pytest.approx(lp["val_accuracy"])
    assert ledger.export["stage"] == "Head"
    out = CliRunner().invoke(app, ["status", str(tmp_path / "runs" / "worse")]).output
    assert "exported: Head: LP (Head on the frozen backbone) has the best validation" in out


@pytest.mark.parametrize(
    ("head", "fft", "chosen"),
    [((0.5, 1.0), (0.35, 1.2), "Head"), ((0.5, 1.0), (0.6, 1.4), "FullFineTune"),
     ((0.5, 1.0), (0.5, 0.9), "FullFineTune"), ((0.5, 1.0), (0.5, 1.0), "Head")],
    ids=["lp-better", "ft-better", "tie-ft-lower-loss", "exact-tie-keeps-lp"],
)
def test_the_choice_is_by_validation_accuracy_then_loss(head, fft, chosen):
    ledger = Ledger(job_uid="u", stages=[
        StageRecord(type=t, state="Succeeded", metrics={"val_accuracy": a, "val_loss": loss, "test_accuracy": 0.99})
        for t, (a, loss) in (("Head", head), ("FullFineTune", fft))
    ])
    picked, _ = selection.choose(selection.candidates(ledger))
    assert picked.stage == chosen
