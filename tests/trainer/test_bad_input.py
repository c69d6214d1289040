"""Bad input at run time: one clear error naming the URI and the cause, recorded as the stage's failure
reason in the ledger, and nothing already written is lost. These fail before any Ray run starts."""

from __future__ import annotations

import pytest
from support.trainer_data import job_doc, smallcnn_weights

from graft import storage
from graft.api.models import StageState, TransferJob
from graft.ledger import Ledger, job_root
from graft_trainer.driver import Driver, StageFailed

STAGES = [{"type": "FrozenFeatures"}, {"type": "Head", "epochs": 2}, {"type": "FullFineTune", "epochs": 1}]


def _job(tmp_path, train, weights, num_classes=3, uid="bad-1"):
    spec = {
        "model": {"backbone": "smallcnn", "numClasses": num_classes, "weights": weights},
        "data": {"train": train, "imageSize": 8},
        "stages": STAGES,
    }
    return TransferJob.model_validate(job_doc("bad", spec, uid=uid))


def _case(name, tmp_path, image_folder, s3_bucket=None):
    """(train URI, weights URI, numClasses, URI the error must name, cause it must give)."""
    weights = str(smallcnn_weights(tmp_path / "w.pt"))
    folder = str(image_folder)
    if name == "unreadable-weights":
        missing = str(tmp_path / "nope.pt")
        return folder, missing, 3, missing, "weights file not found"
    if name == "empty-class-folder":
        (image_folder / "zzz").mkdir()
        return folder, weights, 3, f"{folder}/zzz", "class folder has no images"
    if name == "corrupt-image":
        (image_folder / "dark" / "bad.png").write_bytes(b"nope")
        return folder, weights, 3, f"{folder}/dark/bad.png", "not a readable image"
    if name == "class-count-mismatch":
        return folder, weights, 5, folder, "has 3 classes (bright, dark, mid) but spec.model.numClasses is 5"
    if name == "missing-bucket":
        return "s3://graft-no-such-bucket/train", weights, 3, "s3://graft-no-such-bucket/train", "bucket does not exist"
    if name == "weights-missing-on-s3":
        return folder, f"{s3_bucket}/w.pt", 3, f"{s3_bucket}/w.pt", "weights file not found"
    if name == "manifest-bad-rows":  # a missing file and an empty label, each on its own line
        csv = tmp_path / "train.csv"
        csv.write_text("path,label\nimages/dark/0.png,dark\nimages/mid/0.png,\nimages/nope.png,bright\n")
        cause = ("2 of 3 rows are bad:\n  row 2: images/mid/0.png: empty label\n"
                 f"  row 3: images/nope.png: file not found ({tmp_path}/images/nope.png)")
        return str(csv), weights, 3, str(csv), cause
    if name == "manifest-missing-on-s3":
        return f"{s3_bucket}/train.csv", weights, 3, f"{s3_bucket}/train.csv", "manifest not found"
    raise AssertionError(name)


CASES = [
    "unreadable-weights",
    "empty-class-folder",
    "corrupt-image",
    "class-count-mismatch",
    "missing-bucket",
    "weights-missing-on-s3",
    "manifest-bad-rows",
    "manifest-missing-on-s3",
]


@pytest.mark.parametrize("name", CASES, ids=CASES)
def test_bad_input_fails_the_stage_naming_uri_and_cause(name, tmp_path, image_folder, s3_bucket):
    train, weights, classes, uri, cause = _case(name, tmp_path, image_folder, s3_bucket)
    job = _job(tmp_path, train, weights, classes)
    store = str(tmp_path / "store")
    with pytest.raises(StageFailed) as err:
        Driver(job, store).run()
    assert f"{uri}: {cause}" in str(err.value)
    ledger = Ledger.load(job_root(store, "bad-1"))
    first = ledger.stage("FrozenFeatures")
    assert first.state == StageState.FAILED
    assert first.message.startswith(uri) and cause in first.message
    assert ledger.stage("Head").state == StageState.PENDING


def test_a_failure_after_finished_stages_keeps_them_and_their_outputs(tmp_path, image_folder):
    """A previous attempt finished FrozenFeatures and Head; the weights have since become unreadable:
    FullFineTune fails naming them, and the earlier stages, their outputs and the history stay."""
    store = str(tmp_path / "store")
    root = job_root(store, "bad-1")
    ledger = Ledger.create("bad-1", "bad", [s["type"] for s in STAGES])
    for stage_type, out in (("FrozenFeatures", "features"), ("Head", "outputs/head.pt")):
        rec = ledger.stage(stage_type)
        rec.state, rec.output, rec.end_time = StageState.SUCCEEDED, storage.join(root, out), "2026-01-01T00:00:00Z"
        rec.history = [{"epoch": 1.0, "val_accuracy": 0.5}]
    ledger.attempt = 1
    ledger.save(root)
    storage.write_bytes(storage.join(root, "features", "train.pt"), b"features-from-attempt-1")
    storage.write_bytes(storage.join(root, "outputs", "head.pt"), b"head-from-attempt-1")

    missing = str(tmp_path / "deleted-weights.pt")
    with pytest.raises(StageFailed, match=r"deleted-weights\.pt: weights file not found"):
        Driver(_job(tmp_path, str(image_folder), missing), store).run()

    after = Ledger.load(root)
    assert after.attempt == 2
    assert after.stage("FullFineTune").state == StageState.FAILED
    assert after.stage("FullFineTune").message == f"{missing}: weights file not found"
    for stage_type in ("FrozenFeatures", "Head"):
        rec = after.stage(stage_type)
        assert rec.state == StageState.SUCCEEDED and rec.end_time == "2026-01-01T00:00:00Z"
        assert rec.history == [{"epoch": 1.0, "val_accuracy": 0.5}]
    assert storage.read_bytes(storage.join(root, "features", "train.pt")) == b"features-from-attempt-1"
    assert storage.read_bytes(storage.join(root, "outputs", "head.pt")) == b"head-from-attempt-1"


def test_wrong_credentials_fail_the_stage_naming_the_uri(tmp_path, authenticating_s3):
    job = _job(tmp_path, f"{authenticating_s3}/train", str(smallcnn_weights(tmp_path / "w.pt")))
    store = str(tmp_path / "store")
    with pytest.raises(StageFailed):
        Driver(job, store).run()
    rec = Ledger.load(job_root(store, "bad-1")).stage("FrozenFeatures")
    assert rec.state == StageState.FAILED
    assert rec.message.startswith(f"{authenticating_s3}/train: credentials rejected")


def test_entrypoint_exit_codes_and_inline_json(tmp_path, capsys):
    """The entrypoint exits 2 for an unusable job file, 1 for a failed stage (reason in the ledger)."""
    import json

    from graft_trainer.__main__ import main

    assert main(["--job", str(tmp_path / "missing.json")]) == 2
    assert "cannot read the job file" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: graft.dev/v1alpha1\nkind: TransferJob\nmetadata: {name: x}\nspec: {}\n")
    assert main(["--job", str(bad)]) == 2
    assert "spec.model: required field is missing" in capsys.readouterr().err

    missing = str(tmp_path / "nope.pt")
    doc = _job(tmp_path, "builtin:digits", missing, num_classes=10, uid="inline-1").model_dump(by_alias=True)
    store = str(tmp_path / "store")
    assert main(["--job", json.dumps(doc), "--storage", store]) == 1
    assert f"{missing}: weights file not found" in capsys.readouterr().err
    rec = Ledger.load(job_root(store, "inline-1")).stage("FrozenFeatures")
    assert rec.message == f"{missing}: weights file not found"


def test_a_relative_storage_folder_is_made_absolute_for_the_workers(tmp_path, monkeypatch):
    from graft_trainer.driver import resolve_root

    monkeypatch.chdir(tmp_path)
    job = _job(tmp_path, "builtin:digits", "w.pt", num_classes=10, uid="rel-1")
    assert resolve_root(job, "graft-runs") == str(tmp_path / "graft-runs" / "rel-1")


def test_relative_data_and_weights_paths_are_made_absolute(tmp_path, monkeypatch, image_folder):
    monkeypatch.chdir(image_folder.parent)
    job = _job(tmp_path, "images", "w.pt", uid="rel-2")
    spec = Driver(job, "store").spec
    assert spec.data.train == str(image_folder)
    assert spec.model.weights == str(image_folder.parent / "w.pt")
    assert spec.stages == job.spec.stages
