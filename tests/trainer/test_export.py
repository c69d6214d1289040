"""The exported model loads with plain torch, and `graft predict` prints the top classes."""

from __future__ import annotations

import json

import pytest
import torch
from support.storage_files import upload_dir
from support.trainer_data import write_png
from typer.testing import CliRunner

from graft.cli import app
from graft_trainer import export, models

NOT_AN_IMAGE = "not a readable image (UnidentifiedImageError: not an image format Pillow knows, or a corrupt header)"


@pytest.fixture()
def exported(tmp_path) -> str:
    """A 3-class model whose answer is "beta" (0.9) for every image; returns its URI."""
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
    return export.export_model(str(tmp_path / "job"), net.state_dict(), meta)


def test_export_loads_with_plain_torch_and_predict_prints_top_classes(tmp_path, exported):
    plain = torch.load(tmp_path / "job" / "model" / "model.pt", weights_only=True)
    assert plain["head.bias"].tolist() == [0.0, 4.0, 1.0]

    image = tmp_path / "x.png"
    write_png(image, 100)
    result = CliRunner().invoke(app, ["predict", exported, str(image), "--top", "2"])
    assert result.exit_code == 0, result.output
    line = result.output.strip()
    assert line.startswith(f"{image}: beta 0.9")
    assert "gamma" in line and "alpha" not in line


def test_predict_on_a_folder_that_is_not_a_model_says_so(tmp_path):
    result = CliRunner().invoke(app, ["predict", str(tmp_path), str(tmp_path / "x.png")])
    assert result.exit_code == 1
    assert "no model.json here" in result.output


@pytest.fixture()
def mixed(tmp_path):
    """A folder of images (one corrupt, one hidden, one not an image file), a good file, and a missing one."""
    folder = tmp_path / "photos"
    for rel in ("b.png", "a.png", "sub/c.jpg"):
        write_png(folder / rel, 50)
    (folder / "sub" / "broken.png").write_bytes(b"not an image")
    (folder / ".hidden.png").write_bytes(b"editor swap file")
    (folder / "notes.txt").write_text("not an image file")
    single = tmp_path / "single.png"
    write_png(single, 200)
    return folder, single, tmp_path / "nope.png"


def test_predict_takes_folders_names_each_bad_file_and_goes_on(exported, mixed):
    """Issue 11: `error: nope.png` with no reason, the whole batch stopped at one bad file, folders refused."""
    folder, single, missing = mixed
    result = CliRunner().invoke(app, ["predict", exported, str(missing), str(folder), str(single)])
    assert result.exit_code == 1
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == [
        str(folder / "a.png"), str(folder / "b.png"), str(folder / "sub" / "c.jpg"), str(single)]
    assert all(" beta 0.9" in line for line in result.stdout.splitlines())
    assert result.stderr.splitlines() == [
        f"error: {missing}: not found",
        f"error: {folder / 'sub' / 'broken.png'}: {NOT_AN_IMAGE}",
        "2 of 6 image(s) could not be read",
    ]


def test_predict_json_is_one_document_in_the_order_given(exported, mixed):
    folder, single, missing = mixed
    result = CliRunner().invoke(app, ["predict", exported, str(single), str(missing), "-o", "json", "-k", "1"])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert [d["image"] for d in doc] == [str(single), str(missing)]
    assert doc[0]["top"][0]["label"] == "beta" and doc[0]["top"][0]["probability"] == pytest.approx(0.936, abs=1e-3)
    assert len(doc[0]["top"]) == 1 and "error" not in doc[0]
    assert doc[1] == {"image": str(missing), "error": "not found"}

    good = CliRunner().invoke(app, ["predict", exported, str(folder / "a.png"), "--output", "json"])
    assert good.exit_code == 0 and [d["image"] for d in json.loads(good.stdout)] == [str(folder / "a.png")]
    assert CliRunner().invoke(app, ["predict", exported, str(single), "-o", "yaml"]).exit_code == 2


def test_predict_runs_a_big_folder_in_batches_in_order(exported, tmp_path, monkeypatch):
    folder = tmp_path / "many"
    for i in range(11):
        write_png(folder / f"{i:02d}.png", i)
    (folder / "05.png").write_bytes(b"broken")
    monkeypatch.setattr(export, "PREDICT_BATCH", 4)
    seen: list[int] = []
    real = models.GraftNet.forward
    monkeypatch.setattr(models.GraftNet, "forward", lambda self, x: seen.append(len(x)) or real(self, x))
    results = list(export.predict(exported, [str(folder)]))
    assert [r.image for r in results] == [str(folder / f"{i:02d}.png") for i in range(11)]
    assert [r.error is not None for r in results] == [i == 5 for i in range(11)]
    assert seen == [4, 3, 3]


def test_predict_reads_an_s3_folder(exported, tmp_path, s3_bucket):
    local = tmp_path / "up"
    write_png(local / "x" / "1.png", 10)
    write_png(local / "2.png", 20)
    upload_dir(local, f"{s3_bucket}/imgs")
    result = CliRunner().invoke(app, ["predict", exported, f"{s3_bucket}/imgs", "-o", "json"])
    assert result.exit_code == 0, result.output
    assert [d["image"] for d in json.loads(result.stdout)] == [f"{s3_bucket}/imgs/2.png", f"{s3_bucket}/imgs/x/1.png"]
