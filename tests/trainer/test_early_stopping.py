"""Early stopping (`patience`, `monitor`) of the image stages: where and why the stage stopped is in the ledger, and
the exported model is the best epoch by the monitored validation metric."""

from __future__ import annotations

import pytest
from support.trainer_data import NO_SERVING, job_doc

from graft import storage
from graft.api.models import TransferJob
from graft_trainer import data as data_mod
from graft_trainer import evaluate, scoring
from graft_trainer.driver import Driver
from graft_trainer.executors import LocalExecutor


def _run(tmp_path, stage: dict):
    spec = {
        "model": {"backbone": "smallcnn", "numClasses": 10},
        "data": {"train": "builtin:digits-noisy", "imageSize": 8, "shotsPerClass": 2},
        "stages": [{"type": "FullFineTune", "epochs": 60, "batchSize": 16, "lr": 3e-3, "backboneLrScale": 1.0,
                    "augment": False, **stage}],
        "serving": NO_SERVING,
    }
    job = TransferJob.model_validate(job_doc("stops", spec))
    return job, Driver(job, str(tmp_path), executor=LocalExecutor()).run()


@pytest.mark.parametrize("monitor", ["val_accuracy", "val_loss"])
def test_a_stage_stops_after_patience_epochs_and_exports_its_best_epoch(tmp_path, one_thread, monitor):
    job, ledger = _run(tmp_path, {"patience": 3, "monitor": monitor})
    rec = ledger.stage("FullFineTune")
    history = rec.history
    assert rec.epoch == len(history) < 60
    assert rec.stop == f"early stop at epoch {rec.epoch} of 60: {monitor} did not improve for 3 epochs"
    if monitor == "val_accuracy":
        best = max(range(len(history)), key=lambda i: (history[i]["val_accuracy"], -history[i]["val_loss"]))
    else:
        best = min(range(len(history)), key=lambda i: (history[i]["val_loss"], -history[i]["val_accuracy"]))
    assert rec.metrics["best_epoch"] == best + 1 == rec.epoch - 3
    meta = storage.read_json(storage.join(ledger.model_uri, "model.json"))
    assert meta["metrics"]["best_epoch"] == best + 1
    # The exported weights are that epoch's: they score its validation figures again.
    net, _ = evaluate.load_model(ledger.model_uri)
    _, val, _ = data_mod.target_sets(job.spec.data)
    again = scoring.metrics(scoring.network_logits(net, val, 8, meta["preprocessing"]), val.labels, "val")
    assert again["val_accuracy"] == pytest.approx(history[best]["val_accuracy"])
    assert again["val_loss"] == pytest.approx(history[best]["val_loss"], rel=1e-4)


def test_without_patience_every_epoch_runs(tmp_path, one_thread):
    _, ledger = _run(tmp_path, {"epochs": 6})
    rec = ledger.stage("FullFineTune")
    assert rec.epoch == 6 and len(rec.history) == 6 and rec.stop == "ran all 6 epochs"


@pytest.mark.parametrize(("monitor", "best_epoch", "stopped_at"), [("val_accuracy", 2, 4), ("val_loss", 3, 5)])
def test_the_kept_checkpoint_is_the_best_by_the_monitor_not_always_by_accuracy(monitor, best_epoch, stopped_at):
    """Epochs where accuracy and loss disagree: the session keeps the monitor's best, and stops on its patience."""
    from graft_trainer.loops import EarlyStopping
    from graft_trainer.session import LocalSession

    epochs = [(0.5, 1.0), (0.8, 0.9), (0.7, 0.5), (0.7, 0.6), (0.6, 0.7), (0.9, 0.1)]  # (val_accuracy, val_loss)
    session, stopper, history = LocalSession(), EarlyStopping(monitor, 2, []), []
    for i, (acc, loss) in enumerate(epochs, 1):
        metrics = {"epoch": float(i), "val_accuracy": acc, "val_loss": loss}
        metrics.update(stopper.update(metrics, True))
        history.append(metrics)
        session.report(metrics, {"epoch": i, "history": list(history)}, i, 6)
        if metrics.get("stopped_early"):
            break
    assert (session.best["epoch"], history[-1]["epoch"]) == (best_epoch, stopped_at)
