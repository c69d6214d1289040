"""The held-out test set: split off before anything else, never choosing anything, reported apart by every stage
that makes a classifier (ledger, model.json, the run's summary)."""

from __future__ import annotations

import numpy as np
import pytest
from support.trainer_data import NO_SERVING, SMOKE_CHECKS, job_doc, smallcnn_weights

from graft import storage
from graft.api.models import DataSpec, TransferJob
from graft_trainer import data as data_mod
from graft_trainer import evaluate
from graft_trainer.cli import _fmt_metrics
from graft_trainer.driver import Driver
from graft_trainer.executors import LocalExecutor


def _ids(source: data_mod.Source) -> set[bytes]:
    return {p.tobytes() for p in source.pixels}


def test_a_test_fraction_is_stratified_disjoint_and_untouched_by_the_other_splits():
    base = {"train": "builtin:digits-noisy", "imageSize": 8, "testFraction": 0.25, "seed": 3}
    train, val, test = data_mod.target_sets(DataSpec.model_validate(base))
    assert test is not None and not (_ids(test) & _ids(train)) and not (_ids(test) & _ids(val))
    counts = np.bincount(test.labels, minlength=10)
    assert counts.min() >= 15, counts  # a quarter of each class's ~90 images
    # Few-shot draws and another validation split change train/val, never the test set.
    _, _, same = data_mod.target_sets(DataSpec.model_validate({**base, "shotsPerClass": 2, "validationSplit": 0.5}))
    assert _ids(same) == _ids(test)
    _, _, other_seed = data_mod.target_sets(DataSpec.model_validate({**base, "seed": 4}))
    assert _ids(other_seed) != _ids(test)
    _, _, none = data_mod.target_sets(DataSpec.model_validate({"train": "builtin:digits-noisy"}))
    assert none is None


def test_test_and_test_fraction_together_are_refused_naming_the_field():
    with pytest.raises(ValueError, match="testFraction: give `test`"):
        DataSpec.model_validate({"train": "builtin:digits", "test": "builtin:digits", "testFraction": 0.2})


def test_every_stage_reports_the_test_score_apart_and_it_matches_the_exported_model(tmp_path, one_thread):
    weights = smallcnn_weights(tmp_path / "w.pt")
    spec = {
        "model": {"backbone": "smallcnn", "numClasses": 10, "weights": str(weights)},
        "data": {"train": "builtin:digits-noisy", "imageSize": 8, "testFraction": 0.2, "shotsPerClass": 5},
        "stages": [{"type": "FrozenFeatures"}, {"type": "Head", "epochs": 20},
                   {"type": "FullFineTune", "epochs": 2, "batchSize": 16, "augment": False}],
        "checks": SMOKE_CHECKS,
        "serving": NO_SERVING,
    }
    job = TransferJob.model_validate(job_doc("held-out", spec))
    ledger = Driver(job, str(tmp_path / "runs"), executor=LocalExecutor()).run()
    for stage in ("Head", "FullFineTune"):
        m = ledger.stage(stage).metrics
        assert {"test_accuracy", "test_loss", "val_accuracy"} <= set(m), (stage, m)
        assert "held-out test_accuracy=" in _fmt_metrics(m)
    assert ledger.stage("FrozenFeatures").metrics["test_images"] == pytest.approx(180, abs=10)
    meta = storage.read_json(storage.join(ledger.model_uri, "model.json"))
    # The exported model, scored on the test set by `graft evaluate`, gets the accuracy model.json reports.
    _, _, test = data_mod.target_sets(job.spec.data)
    source = test
    net, _ = evaluate.load_model(ledger.model_uri)
    from graft_trainer import scoring

    logits = scoring.network_logits(net, source, 8, meta["preprocessing"])
    assert meta["metrics"]["test_accuracy"] == pytest.approx((logits.argmax(1).numpy() == source.labels).mean())
