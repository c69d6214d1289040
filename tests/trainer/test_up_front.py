"""Every stage's inputs are checked before the first stage starts: a wrong numClasses, a missing data path or
unloadable weights fail the job in seconds, not after Pretrain (issue 11, problems 2 and 3)."""

from __future__ import annotations

import pytest
from support.trainer_data import SMOKE_CHECKS, job_doc, smallcnn_weights

from graft.api.models import StageState, TransferJob
from graft.ledger import Ledger, job_root
from graft_trainer.driver import Driver, StageFailed
from graft_trainer.executors import LocalExecutor

PRETRAIN = {"type": "Pretrain", "data": "builtin:digits-clean", "numClasses": 10, "epochs": 1, "batchSize": 128}
LPFT = [{"type": "FrozenFeatures"}, {"type": "Head", "epochs": 2}, {"type": "FullFineTune", "epochs": 1}]


class Recording(LocalExecutor):
    """LocalExecutor that records which stages' runs started (and with which initial backbone)."""

    def __init__(self):
        super().__init__()
        self.runs: list[tuple[str, str | None]] = []

    def fit(self, loop, cfg, keep):
        self.runs.append((cfg.stage.type, cfg.init_backbone))
        return super().fit(loop, cfg, keep)

    def in_process(self, loop, cfg):
        self.runs.append((cfg.stage.type, cfg.init_backbone))
        return super().in_process(loop, cfg)

    def features(self, cfg, sets, out_uri):
        self.runs.append((cfg.stage.type, cfg.init_backbone))
        return super().features(cfg, sets, out_uri)


def _run(store, model, data, stages=None, executor=None):
    spec = {"model": model, "data": {"imageSize": 8, "shotsPerClass": 2, **data}, "stages": stages or [PRETRAIN, *LPFT],
            "checks": SMOKE_CHECKS}
    job = TransferJob.model_validate(job_doc("late", spec))
    return Driver(job, str(store), executor=executor or Recording()).run()


def _cases(tmp_path, image_folder):
    """(id, model, data, the error the job must fail with, the stage it is recorded against)."""
    missing = str(tmp_path / "no-such-dir")
    absent = str(tmp_path / "absent.pt")
    return {
        "num-classes": ({"backbone": "smallcnn", "numClasses": 5}, {"train": "builtin:digits-noisy"},
                        "builtin:digits-noisy: has 10 classes (0, 1, 2, 3, 4, 5, 6, 7, 8, 9) but spec.model.numClasses "
                        "is 5", "FrozenFeatures"),
        "missing-train": ({"backbone": "smallcnn", "numClasses": 10}, {"train": missing},
                          f"{missing}: not found (expected an ImageFolder", "FrozenFeatures"),
        "corrupt-target-image": ({"backbone": "smallcnn", "numClasses": 3}, {"train": str(image_folder)},
                                 f"{image_folder}/dark/bad.png: not a readable image", "FrozenFeatures"),
        "weights-file-missing": ({"backbone": "smallcnn", "numClasses": 10, "weights": absent},
                                 {"train": "builtin:digits-noisy"}, f"{absent}: weights file not found", "Pretrain"),
        "torchvision-name": ({"backbone": "resnet18", "numClasses": 10, "weights": "torchvision:IMAGENET_V9"},
                             {"train": "builtin:digits-noisy", "imageSize": 32},
                             "torchvision:IMAGENET_V9: no such torchvision weights for resnet18; known: IMAGENET1K_V1",
                             "Pretrain"),
    }


CASES = ["num-classes", "missing-train", "corrupt-target-image", "weights-file-missing", "torchvision-name"]


@pytest.mark.parametrize("name", CASES, ids=CASES)
def test_bad_input_of_any_stage_fails_before_the_first_stage_runs(name, tmp_path, image_folder):
    (image_folder / "dark" / "bad.png").write_bytes(b"not a png")
    model, data, error, stage = _cases(tmp_path, image_folder)[name]
    executor = Recording()
    with pytest.raises(StageFailed) as err:
        _run(tmp_path / "store", model, data, executor=executor)
    assert error in str(err.value)
    assert executor.runs == []  # Pretrain never started
    ledger = Ledger.load(job_root(str(tmp_path / "store"), "late"))
    assert ledger.stage("Pretrain").state == (StageState.FAILED if stage == "Pretrain" else StageState.PENDING)
    rec = ledger.stage(stage)
    assert rec.state == StageState.FAILED and error in rec.message and rec.start_time is None
    assert ledger.message == f"{stage}: {rec.message}"


def test_fixing_the_spec_after_an_up_front_failure_is_not_a_spec_change(tmp_path, one_thread):
    """Nothing ran, so nothing recorded depends on the old spec: the corrected job runs without --restart."""
    store = tmp_path / "store"
    with pytest.raises(StageFailed, match="numClasses is 5"):
        _run(store, {"backbone": "smallcnn", "numClasses": 5}, {"train": "builtin:digits-noisy"})
    ledger = _run(store, {"backbone": "smallcnn", "numClasses": 10}, {"train": "builtin:digits-noisy"})
    assert ledger.done and ledger.model_uri


def test_weights_given_with_a_pretrain_stage_initialise_it(tmp_path, one_thread):
    """Issue 11, problem 3: weights and a Pretrain stage were run as if no weights were given."""
    weights = str(smallcnn_weights(tmp_path / "w.pt"))
    executor = Recording()
    model = {"backbone": "smallcnn", "numClasses": 10, "weights": weights}
    _run(tmp_path / "store", model, {"train": "builtin:digits-noisy"}, executor=executor)
    pretrained = str(tmp_path / "store" / "late" / "outputs" / "pretrain.pt")
    assert executor.runs == [("Pretrain", weights), ("FrozenFeatures", pretrained), ("Head", None),
                             ("FullFineTune", pretrained)]


def test_a_streamed_target_set_is_checked_by_sample(tmp_path, image_folder, monkeypatch):
    """A set too large to keep in a worker's memory: a sample is decoded up front (here the first image of
    every class, which is the corrupt one), so the common case, a wrong format throughout, fails early too."""
    from graft_trainer import data

    monkeypatch.setattr(data, "CHECK_SAMPLE", 1)
    (image_folder / "dark" / "0.png").write_bytes(b"not a png")
    spec = {"model": {"backbone": "smallcnn", "numClasses": 3}, "data": {"train": str(image_folder), "imageSize": 8},
            "stages": [PRETRAIN, *LPFT], "workers": {"memory": "4Ki"}}
    executor = Recording()
    with pytest.raises(StageFailed, match=r"dark/0\.png: not a readable image"):
        Driver(TransferJob.model_validate(job_doc("s", spec)), str(tmp_path), executor=executor).run()
    assert executor.runs == []


@pytest.mark.parametrize("memory, checked", [("4Gi", "3 of 18 images checked"),
                                             ("4Ki", "3 of 3 images checked (a sample of the set's 18)")],
                         ids=["kept", "streamed-sample"])
def test_every_corrupt_target_image_is_in_the_runs_failure(tmp_path, image_folder, monkeypatch, memory, checked):
    """Issue 11: the run stopped at the first of three corrupt images; now the failure (and the ledger) lists all."""
    from graft_trainer import data

    monkeypatch.setattr(data, "CHECK_SAMPLE", 0)  # a streamed set's sample: the first image of every class
    bad = [image_folder / c / "0.png" for c in ("bright", "dark", "mid")]
    for path in bad:
        path.write_bytes(b"not a png")
    spec = {"model": {"backbone": "smallcnn", "numClasses": 3}, "data": {"train": str(image_folder), "imageSize": 8,
            "validation": str(image_folder)}, "stages": [PRETRAIN, *LPFT], "workers": {"memory": memory}}
    with pytest.raises(StageFailed) as err:
        Driver(TransferJob.model_validate(job_doc("c", spec)), str(tmp_path), executor=Recording()).run()
    assert f"{image_folder}: {checked} are not readable:" in str(err.value)
    assert all(f"  {p}: not a readable image (UnidentifiedImageError" in str(err.value) for p in bad)
    assert str(err.value).endswith(Ledger.load(job_root(str(tmp_path), "c")).stage("FrozenFeatures").message)


def test_corrupt_images_of_the_training_and_validation_sets_are_listed_together(tmp_path, image_folder):
    import shutil

    validation = tmp_path / "validation"
    shutil.copytree(image_folder, validation)
    (image_folder / "dark" / "1.png").write_bytes(b"not a png")
    (validation / "mid" / "2.png").write_bytes(b"not a png")
    spec = {"model": {"backbone": "smallcnn", "numClasses": 3},
            "data": {"train": str(image_folder), "validation": str(validation), "imageSize": 8},
            "stages": [PRETRAIN, *LPFT]}
    with pytest.raises(StageFailed) as err:
        Driver(TransferJob.model_validate(job_doc("tv", spec)), str(tmp_path), executor=Recording()).run()
    lines = str(err.value).splitlines()
    assert lines[0] == (f"stage FrozenFeatures failed: {image_folder}, {validation}: 2 of 36 images checked are "
                        "not readable:")
    assert [line.split(": ")[0].strip() for line in lines[1:]] == [
        str(image_folder / "dark" / "1.png"), str(validation / "mid" / "2.png")]
