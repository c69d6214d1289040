"""Fixtures of the trainer tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.trainer_data import write_png


@pytest.fixture()
def image_folder(tmp_path) -> Path:
    """A 3-class ImageFolder: dark, mid and bright images, 6 each."""
    root = tmp_path / "images"
    for c, value in (("dark", 30), ("mid", 128), ("bright", 225)):
        for i in range(6):
            write_png(root / c / f"{i}.png", value + i)
    return root
