"""`graft evaluate MODEL DATA`: accuracy, per-class precision/recall and a confusion matrix (table and PNG) on an
ImageFolder, a built-in set or a manifest's validation set (issue 11)."""

from __future__ import annotations

import json

import pytest
from support.storage_files import upload_dir
from support.trainer_data import export_constant_model, job_doc, write_job
from typer.testing import CliRunner

from graft.cli import app

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def model(tmp_path) -> str:
    """Answers "dark" for every image; its labels are in another order than the ImageFolder's sorted classes."""
    return export_constant_model(tmp_path / "job", ["dark", "bright", "mid"], "dark")


def test_evaluate_prints_accuracy_per_class_metrics_and_the_confusion_matrix(model, image_folder, tmp_path):
    for i in (4, 5):  # classes of different sizes: a class matched by position rather than name shows
        (image_folder / "bright" / f"{i}.png").unlink()
    png = tmp_path / "out" / "cm.png"
    result = CliRunner().invoke(app, ["evaluate", model, str(image_folder), "--png", str(png)])
    assert result.exit_code == 0, result.output
    lines = [line.replace("│", " ").replace("┃", " ").split() for line in result.stdout.splitlines()]
    assert "accuracy: 0.3750 (6 of 16 images)" in result.stdout
    # per class, in the model's label order; matched by name (the folder's classes are sorted otherwise)
    first = lines.index(["class", "precision", "recall", "support"])
    assert lines[first + 2: first + 5] == [["dark", "0.375", "1.000", "6"], ["bright", "0.000", "0.000", "4"],
                                           ["mid", "0.000", "0.000", "6"]]
    # confusion matrix: rows true, columns predicted
    header = lines.index(["true", "\\", "predicted", "dark", "bright", "mid"])
    assert lines[header + 2: header + 5] == [["dark", "6", "0", "0"], ["bright", "4", "0", "0"], ["mid", "6", "0", "0"]]
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert result.stdout.rstrip().endswith(f"confusion matrix PNG: {png}")


def test_evaluate_writes_confusion_png_in_the_current_folder_by_default_and_json(model, image_folder, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["evaluate", model, str(image_folder), "-o", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (tmp_path / "confusion.png").read_bytes().startswith(PNG_MAGIC)
    assert doc["png"] == str(tmp_path / "confusion.png")
    assert (doc["images"], doc["correct"], doc["accuracy"]) == (18, 6, pytest.approx(1 / 3))
    assert doc["classes"][0] == {"label": "dark", "precision": pytest.approx(1 / 3), "recall": 1.0,
                                 "f1": pytest.approx(0.5), "support": 6}
    assert [c["label"] for c in doc["classes"]] == ["dark", "bright", "mid"]
    assert doc["confusion_matrix"] == [[6, 0, 0], [6, 0, 0], [6, 0, 0]]


def test_evaluate_refuses_data_whose_classes_are_not_the_models(tmp_path, image_folder):
    other = export_constant_model(tmp_path / "other", ["cat", "dark", "dog"], "cat")
    result = CliRunner().invoke(app, ["evaluate", other, str(image_folder), "--png", str(tmp_path / "cm.png")])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: {image_folder}: its classes ['bright', 'dark', 'mid'] differ from the model's labels "
        "['cat', 'dark', 'dog'] (only in the data: ['bright', 'mid']; only in the model: ['cat', 'dog'])")
    assert not (tmp_path / "cm.png").exists()


def test_evaluate_on_a_manifest_uses_its_validation_split(model, image_folder, tmp_path):
    spec = {"model": {"backbone": "smallcnn", "numClasses": 3, "weights": "w.pt"},
            "data": {"train": str(image_folder), "imageSize": 8, "validationSplit": 0.34, "seed": 3},
            "stages": [{"type": "FullFineTune"}]}
    manifest = write_job(tmp_path / "job.yaml", job_doc("shapes", spec))
    result = CliRunner().invoke(app, ["evaluate", model, str(manifest), "-o", "json", "--png", str(tmp_path / "c.png")])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["images"] == 6 and [c["support"] for c in doc["classes"]] == [2, 2, 2]
    assert doc["data"] == f"{image_folder}: the validation split of {manifest} (0.34 of each class, seed 3)"


def test_evaluate_lists_every_unreadable_image(model, image_folder, tmp_path):
    for name in ("x.png", "y.png"):
        (image_folder / "mid" / name).write_bytes(b"broken")
    result = CliRunner().invoke(app, ["evaluate", model, str(image_folder), "--png", str(tmp_path / "c.png")])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == f"error: {image_folder}: 2 of 20 images checked are not readable:"
    assert [line.split(": ")[0].strip() for line in result.stderr.splitlines()[1:]] == [
        str(image_folder / "mid" / "x.png"), str(image_folder / "mid" / "y.png")]


def test_evaluate_reads_an_s3_image_folder(model, image_folder, s3_bucket, tmp_path):
    upload_dir(image_folder, f"{s3_bucket}/val")
    result = CliRunner().invoke(app, ["evaluate", model, f"{s3_bucket}/val", "-o", "json",
                                      "--png", f"{s3_bucket}/reports/cm.png"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["images"] == 18 and doc["png"] == f"{s3_bucket}/reports/cm.png"
    from graft import storage

    assert storage.read_bytes(f"{s3_bucket}/reports/cm.png").startswith(PNG_MAGIC)
