"""Leakage between splits, found by content: planted copies are found (under other names too), the demo's
splits are clean."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from graft_trainer import data
from graft_trainer.leakage import TARGET_PAIRS, overlaps


def _folder(root, images: dict[str, np.ndarray]) -> str:
    for rel, pixels in images.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
    return str(root)


def _image(seed: int) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (8, 8, 3), dtype=np.uint8)


def test_planted_copies_across_target_splits_are_found_by_content(tmp_path):
    train = _folder(tmp_path / "train", {f"{c}/{i}.png": _image(10 * c + i) for c in (0, 1) for i in range(4)})
    # The test split holds two training images under new names, and one image of its own.
    test = _folder(tmp_path / "test", {"0/copy.png": _image(1), "1/renamed.png": _image(12), "1/own.png": _image(99)})
    splits = {"train": data.open_source(train), "test": data.open_source(test)}
    (found,) = overlaps(splits, TARGET_PAIRS)
    assert (found.first, found.second, found.count) == ("train", "test", 2)
    assert sorted(e.rsplit("/", 2)[-2:][1] for e in found.examples) == ["1.png", "2.png"]
    assert "2 image(s) of the test split are also in the train split" in str(found)


def test_pretrain_data_that_is_the_targets_own_test_set_is_found():
    _, _, target_test = data.target_sets(_demo_data(test_fraction=0.3))
    pretrain = data.open_source("builtin:digits-noisy")  # the target's own source, test split included
    (found,) = overlaps({"pretrain": pretrain, "test": target_test}, [("pretrain", "test")])
    assert found.count == len(target_test)


@pytest.mark.parametrize("test_fraction", [None, 0.3])
def test_the_demos_splits_share_nothing(test_fraction):
    train, val, test = data.target_sets(_demo_data(test_fraction))
    splits = {"train": train, "validation": val, **({"test": test} if test is not None else {})}
    pairs = [*TARGET_PAIRS, ("pretrain", "test")]
    assert overlaps({**splits, "pretrain": data.open_source("builtin:digits-clean")}, pairs) == []


def _demo_data(test_fraction):
    from graft.api.models import DataSpec

    return DataSpec.model_validate({"train": "builtin:digits-noisy", "shotsPerClass": 5, "seed": 0,
                                    **({"testFraction": test_fraction} if test_fraction else {})})
