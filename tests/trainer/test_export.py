"""The exported model loads with plain torch, and `graft predict` prints the top classes."""

from __future__ import annotations

import torch
from graft.trainer import export, models
from support.trainer_data import write_png
from typer.testing import CliRunner

from graft.cli import app


def test_export_loads_with_plain_torch_and_predict_prints_top_classes(tmp_path):
    net = models.build("smallcnn", num_classes=3, image_size=8)
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.copy_(torch.tensor([0.0, 4.0, 1.0]))  # "beta" wins for every image
    meta = {
        "architecture": "smallcnn",
        "num_classes": 3,
        "labels": ["alpha", "beta", "gamma"],
        "preprocessing": {"image_size": 8, "mean": [0.5] * 3, "std": [0.5] * 3},
        "metrics": {"val_accuracy": 0.9},
    }
    uri = export.export_model(str(tmp_path / "job"), net.state_dict(), meta)

    plain = torch.load(tmp_path / "job" / "model" / "model.pt", weights_only=True)
    assert plain["head.bias"].tolist() == [0.0, 4.0, 1.0]

    image = tmp_path / "x.png"
    write_png(image, 100)
    result = CliRunner().invoke(app, ["predict", uri, str(image), "--top", "2"])
    assert result.exit_code == 0, result.output
    line = result.output.strip()
    assert line.startswith(f"{image}: beta 0.9")
    assert "gamma" in line and "alpha" not in line


def test_predict_on_a_folder_that_is_not_a_model_says_so(tmp_path):
    result = CliRunner().invoke(app, ["predict", str(tmp_path), str(tmp_path / "x.png")])
    assert result.exit_code == 1
    assert "no model.json here" in result.output
