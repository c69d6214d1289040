"""Weight interpolation (WiSE-FT): alpha x fine-tuned + (1 - alpha) x LP, the curve in the ledger, the best alpha by
validation an export candidate."""

from __future__ import annotations

import pytest
from support.trainer_data import NO_SERVING, SMOKE_CHECKS, job_doc, smallcnn_weights

from graft import storage
from graft.api.models import TransferJob, TransferJobSpec
from graft_trainer.driver import Driver
from graft_trainer.executors import LocalExecutor


def _run(tmp_path, fft: dict):
    weights = smallcnn_weights(tmp_path / "w.pt")
    spec = {
        "model": {"backbone": "smallcnn", "numClasses": 10, "weights": str(weights)},
        "data": {"train": "builtin:digits-noisy", "imageSize": 8, "shotsPerClass": 5, "testFraction": 0.2},
        "stages": [{"type": "FrozenFeatures"}, {"type": "Head", "epochs": 30},
                   {"type": "FullFineTune", "epochs": 4, "batchSize": 16, "augment": False, **fft}],
        "checks": SMOKE_CHECKS,
        "serving": NO_SERVING,
    }
    return Driver(TransferJob.model_validate(job_doc("wise", spec)), str(tmp_path / "runs"),
                  executor=LocalExecutor()).run()


def test_the_curve_runs_from_the_lp_model_to_the_fine_tuned_one_and_the_best_alpha_is_kept(tmp_path, one_thread):
    ledger = _run(tmp_path, {"interpolate": "auto"})
    head, fft = ledger.stage("Head"), ledger.stage("FullFineTune")
    curve = fft.interpolation["curve"]
    assert [r["alpha"] for r in curve] == pytest.approx([i / 10 for i in range(11)])
    # alpha 0 is the LP model (the Head's head on the pretrained backbone), alpha 1 the fine-tuned weights.
    assert curve[0]["val_accuracy"] == pytest.approx(head.metrics["val_accuracy"])
    assert curve[-1]["val_accuracy"] == pytest.approx(fft.metrics["val_accuracy"])
    best = max(curve, key=lambda r: (r["val_accuracy"], -r["val_loss"]))
    assert fft.interpolation["alpha"] == best["alpha"]
    assert fft.interpolation["metrics"]["val_accuracy"] == pytest.approx(best["val_accuracy"])
    assert "test_accuracy" in fft.interpolation["metrics"]
    meta = storage.read_json(storage.join(ledger.model_uri, "model.json"))
    assert [c["stage"] for c in meta["selection"]["candidates"]] == ["Head", "FullFineTune", "Interpolated"]
    assert meta["selection"]["interpolation"]["curve"] == curve
    # Each alternative is tested against FullFineTune on the same validation images; the export is the one chosen.
    tests = meta["selection"]["tests"]
    assert [t["stage"] for t in tests] == ["Head", "Interpolated"]
    assert tests[0]["images"] == tests[1]["images"] > 0
    chosen = next(c for c in meta["selection"]["candidates"] if c["stage"] == meta["selection"]["stage"])
    assert meta["metrics"]["val_accuracy"] == chosen["val_accuracy"]


def test_a_fixed_alpha_is_the_one_evaluated(tmp_path, one_thread):
    ledger = _run(tmp_path, {"interpolationAlpha": 0.5})
    assert [r["alpha"] for r in ledger.stage("FullFineTune").interpolation["curve"]] == [0.5]


def test_interpolation_without_a_head_stage_is_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"stages\[0\].interpolate: interpolation mixes"):
        TransferJobSpec.model_validate({
            "model": {"backbone": "smallcnn", "numClasses": 10},
            "data": {"train": "builtin:digits"},
            "stages": [{"type": "FullFineTune", "interpolate": "auto"}],
        })
