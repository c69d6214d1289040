"""Calibration: one temperature fitted on validation logits after Head and FullFineTune, ECE (15 bins) before and
after on validation and test, and `graft predict` giving the calibrated probabilities."""

from __future__ import annotations

import pytest
import torch
from support.trainer_data import NO_SERVING, job_doc, smallcnn_weights

from graft import storage
from graft.api.models import TransferJob
from graft_trainer import data as data_mod
from graft_trainer import export, scoring
from graft_trainer.driver import Driver
from graft_trainer.executors import LocalExecutor


def _overconfident(n: int, temperature: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a calibrated model (labels drawn from its own softmax), multiplied by `temperature`."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 5, generator=g) * 2
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1)
    return logits * temperature, labels


def test_the_fitted_temperature_undoes_overconfidence_and_lowers_ece():
    logits, labels = _overconfident(20_000, 3.0)
    t = scoring.fit_temperature(logits, labels)
    assert t == pytest.approx(3.0, rel=0.05)
    assert scoring.ece(logits, labels) > 0.1
    assert scoring.ece(logits, labels, temperature=t) < 0.02


def test_ece_is_the_weighted_gap_between_confidence_and_accuracy():
    # Two samples, both predicted with confidence ~0.731 (logit gap 1): one right, one wrong -> |0.5 - 0.731|.
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert scoring.ece(logits, torch.tensor([0, 1])) == pytest.approx(abs(0.5 - torch.sigmoid(torch.tensor(1.0))))
    assert scoring.ece(logits, torch.tensor([0, 0])) == pytest.approx(1 - torch.sigmoid(torch.tensor(1.0)).item())


def test_stages_report_calibration_and_predict_uses_the_temperature(tmp_path, one_thread):
    weights = smallcnn_weights(tmp_path / "w.pt")
    spec = {
        "model": {"backbone": "smallcnn", "numClasses": 10, "weights": str(weights)},
        "data": {"train": "builtin:digits-noisy", "imageSize": 8, "shotsPerClass": 5, "testFraction": 0.2},
        "stages": [{"type": "FrozenFeatures"}, {"type": "Head", "epochs": 30},
                   {"type": "FullFineTune", "epochs": 3, "batchSize": 16, "augment": False}],
        # 3 epochs from a random backbone leave FullFineTune near chance: the learning check warns, the job goes on.
        "checks": {"learning": {"action": "Warn"}},
        "serving": NO_SERVING,
    }
    job = TransferJob.model_validate(job_doc("calibrated", spec))
    ledger = Driver(job, str(tmp_path / "runs"), executor=LocalExecutor()).run()
    for stage in ("Head", "FullFineTune"):
        m = ledger.stage(stage).metrics
        assert {"temperature", "val_ece", "val_ece_calibrated", "test_ece", "test_ece_calibrated"} <= set(m)
        assert m["temperature"] > 0 and m["temperature"] != 1.0
    meta = storage.read_json(storage.join(ledger.model_uri, "model.json"))
    chosen = meta["selection"]["stage"]
    assert meta["temperature"] == ledger.stage(chosen).metrics["temperature"]
    # graft predict's probabilities are softmax(logits / T) of the exported network.
    net, _ = export.load_model(ledger.model_uri)
    _, _, test = data_mod.target_sets(job.spec.data)
    image = tmp_path / "one.png"
    from PIL import Image

    pixels = (test.pixels[0].transpose(1, 2, 0).clip(0, 1) * 255).round().astype("uint8")
    Image.fromarray(pixels).save(image)
    (prediction,) = list(export.predict(ledger.model_uri, [str(image)], top=1))
    x = torch.from_numpy(pixels.transpose(2, 0, 1).copy()).float().unsqueeze(0) / 255.0
    logits = scoring.network_logits(net, data_mod.Source("x", test.classes, test.labels[:1], pixels=x.numpy()), 8,
                                    meta["preprocessing"])
    expected = torch.softmax(logits / meta["temperature"], 1).max().item()
    assert prediction.top[0][1] == pytest.approx(expected, rel=1e-4)
    assert prediction.top[0][1] != pytest.approx(torch.softmax(logits, 1).max().item(), rel=1e-3)
