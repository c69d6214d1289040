"""FullFineTune on an ImageFolder too large for the worker's memory budget streams it from storage, and
learns exactly what it learns with the set kept in memory."""

from __future__ import annotations

import pytest

from graft.api.models import TransferJobSpec
from graft_trainer import data, loops
from graft_trainer.errors import InputError
from graft_trainer.session import LocalSession
from graft_trainer.stages import StageConfig


def _run(image_folder, memory: str) -> list[dict[str, float]]:
    spec = TransferJobSpec.model_validate({
        "model": {"backbone": "smallcnn", "numClasses": 3, "weights": "s3://unused/w.pt"},  # never loaded here
        "data": {"train": str(image_folder), "imageSize": 16, "validationSplit": 0.34},
        "stages": [{"type": "FrozenFeatures"}, {"type": "Head"}, {"type": "FullFineTune", "epochs": 2,
                                                                   "batchSize": 4}],
        "workers": {"replicas": 1, "memory": memory},
    })
    session = LocalSession()
    loops.train_network(session, StageConfig(spec, 2))
    return session.reports


def test_full_fine_tune_streams_a_set_over_budget_with_identical_results(image_folder, monkeypatch, one_thread):
    sets: list[data.ImageSet] = []
    real = data.ImageSet.__init__

    def spy(self, *a, **k):
        real(self, *a, **k)
        sets.append(self)

    monkeypatch.setattr(data.ImageSet, "__init__", spy)
    kept = _run(image_folder, "4Gi")
    assert [s.streaming for s in sets] == [False, False]
    sets.clear()
    streamed = _run(image_folder, "4Ki")  # a 1 KiB budget: neither set fits
    assert [s.streaming for s in sets] == [True, True]
    assert len(kept) == len(streamed) == 2
    for a, b in zip(kept, streamed, strict=True):
        for key in ("train_loss", "val_loss", "val_accuracy"):
            assert a[key] == b[key], (key, a, b)


def test_a_corrupt_image_in_a_streamed_set_fails_training_naming_the_file(image_folder, one_thread):
    (image_folder / "dark" / "0.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"dark/0\.png: not a readable image"):
        _run(image_folder, "4Ki")


def test_the_driver_verifies_a_kept_set_up_front_and_a_sample_of_a_streamed_one(image_folder, monkeypatch):
    """A streamed set is too large to decode before the first stage: the first image of every class and
    CHECK_SAMPLE others are (here 3 + 4 of 18: 4 to 7 images, as the two may overlap)."""
    from graft_trainer.stages import verify_up_front

    verified: list[data.Source] = []
    monkeypatch.setattr(data, "CHECK_SAMPLE", 4)
    monkeypatch.setattr(data, "verify_images", lambda s, threads=8, of=None: verified.append(s))
    src = data.open_source(str(image_folder))
    for memory in ("4Gi", "4Ki"):
        verified.clear()
        spec = TransferJobSpec.model_validate({
            "model": {"backbone": "smallcnn", "numClasses": 3, "weights": "s3://unused/w.pt"},
            "data": {"train": str(image_folder), "imageSize": 16},
            "stages": [{"type": "FrozenFeatures"}, {"type": "Head"}],
            "workers": {"memory": memory},
        })
        verify_up_front(spec, src)
        assert len(verified) == 1 and set(verified[0].labels) == {0, 1, 2}, memory
        if memory == "4Gi":
            assert verified[0].files == src.files
        else:
            assert 4 <= len(verified[0]) <= 7 and set(verified[0].files) < set(src.files)
