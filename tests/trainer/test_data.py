"""Data sets: built-in digits variants, ImageFolder local and s3://, and bad input named by URI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.storage_files import upload_dir

from graft.storage import StorageError
from graft_trainer import data
from graft_trainer.errors import InputError


def test_builtin_digits_variants_split_the_set_and_only_the_target_is_noisy():
    full, clean, noisy = (data.open_source(f"builtin:{n}") for n in ("digits", "digits-clean", "digits-noisy"))
    assert len(full) == 1797 and len(clean) + len(noisy) == 1797
    assert clean.pixels.min() >= 0 and clean.pixels.max() <= 1
    assert noisy.pixels.std() > clean.pixels.std()
    again = data.open_source("builtin:digits-noisy")
    assert np.array_equal(again.pixels, noisy.pixels), "the built-in sets must be the same on every machine"
    assert data.open_source("builtin:digits").images(16).shape == (1797, 3, 16, 16)


def test_few_shot_and_stratified_split():
    train, val = data.train_val("builtin:digits-noisy", None, 0.2, seed=3, shots=2)
    assert np.bincount(train.labels).tolist() == [2] * 10
    assert 150 < len(val) < 200 and set(val.labels.tolist()) == set(range(10))


def test_image_folder_local(image_folder):
    src = data.open_source(str(image_folder))
    assert src.classes == ["bright", "dark", "mid"]
    x = src.images(16)
    assert x.shape == (18, 3, 16, 16)
    assert x[src.labels == 0].mean() > x[src.labels == 2].mean() > x[src.labels == 1].mean()


def test_decoded_files_kept_compact_are_the_same_images_in_a_quarter_of_the_memory(image_folder):
    src = data.open_source(str(image_folder))
    full, compact = src.images(16), src.images(16, compact=True)
    assert compact.dtype == torch.uint8 and compact.element_size() * 4 == full.element_size()
    assert torch.equal(data.as_float(compact), full)
    digits = data.open_source("builtin:digits-noisy")  # float pixels with noise: never quantised
    assert torch.equal(digits.images(8, compact=True), digits.images(8))


def test_image_folder_on_s3(image_folder, s3_bucket):
    upload_dir(image_folder, f"{s3_bucket}/ds")
    src = data.open_source(f"{s3_bucket}/ds")
    assert src.classes == ["bright", "dark", "mid"] and len(src) == 18
    assert src.files[0].startswith(f"{s3_bucket}/ds/bright/")
    assert src.images(8).shape == (18, 3, 8, 8)


def test_empty_class_folder_is_named(image_folder):
    (image_folder / "empty").mkdir()
    with pytest.raises(InputError, match="class folder has no images") as err:
        data.open_source(str(image_folder))
    assert err.value.uri.endswith("/empty")


def test_corrupt_image_is_named(image_folder):
    bad = image_folder / "mid" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    src = data.open_source(str(image_folder))
    with pytest.raises(InputError, match="not a readable image") as err:
        data.verify_images(src)
    assert err.value.uri == str(bad)


def test_every_corrupt_image_is_listed_with_a_human_reason(image_folder):
    """Issue 11: only the first of three corrupt images was reported, as `<_io.BytesIO object at 0x...>`."""
    bad = [image_folder / "dark" / "a.png", image_folder / "mid" / "b.jpg", image_folder / "mid" / "c.png"]
    for path in bad:
        path.write_bytes(b"not an image at all")
    src = data.open_source(str(image_folder))
    with pytest.raises(InputError) as err:
        data.verify_images(src)
    message = str(err.value)
    assert message.splitlines() == [f"{image_folder}: 3 of 21 images checked are not readable:"] + [
        f"  {p}: not a readable image (UnidentifiedImageError: not an image format Pillow knows, or a corrupt header)"
        for p in sorted(bad)
    ]
    assert "BytesIO" not in message and "0x" not in message


def test_many_corrupt_images_are_capped_with_a_count(image_folder):
    for i in range(13):
        (image_folder / "bright" / f"bad{i:02d}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(InputError) as err:
        data.verify_images(data.open_source(str(image_folder)))
    lines = str(err.value).splitlines()
    assert lines[0] == f"{image_folder}: 13 of 31 images checked are not readable:"
    assert [line.split(": ")[0].strip() for line in lines[1:11]] == [
        str(image_folder / "bright" / f"bad{i:02d}.png") for i in range(10)
    ]
    assert lines[11:] == ["  ... and 3 more"]


def test_missing_bucket_is_named(s3_endpoint):
    with pytest.raises(StorageError, match="s3://no-such-bucket-here/ds: bucket does not exist"):
        data.open_source("s3://no-such-bucket-here/ds")


def test_wrong_credentials_are_named(authenticating_s3):
    with pytest.raises(StorageError, match="s3://locked/ds: credentials rejected"):
        data.open_source(f"{authenticating_s3}/ds")


def test_image_set_streams_what_does_not_fit_and_gives_the_same_batches(image_folder, monkeypatch):
    src = data.open_source(str(image_folder))
    kept = data.ImageSet(src, 16, budget=10**9)
    decoded: list[str] = []
    real_decode = data.decode_image
    monkeypatch.setattr(data, "decode_image",
                        lambda uri, size, *rest: decoded.append(uri) or real_decode(uri, size, *rest))
    streamed = data.ImageSet(src, 16, budget=18 * 3 * 16 * 16 - 1)  # one byte short of the whole set
    assert not kept.streaming and streamed.streaming and decoded == [], "nothing decoded before it is read"
    index = torch.randperm(len(src), generator=torch.Generator().manual_seed(0))
    batches = streamed.batches(index, 4)
    first_idx, first = next(batches)
    assert len(decoded) <= 8, "at most the batch and the one decoded ahead"
    rest = list(batches)
    for (bk, xk), (bs, xs) in zip(kept.batches(index, 4), [(first_idx, first), *rest], strict=True):
        assert torch.equal(bk, bs) and xs.dtype == torch.float32 and torch.equal(xk, xs)
    assert sorted(decoded) == sorted(src.files)


def test_keep_budget_is_a_quarter_of_the_worker_memory():
    assert data.keep_budget("4Gi") == 2**30
    assert data.keep_budget("512Mi") == 2**27


def test_builtin_digits_are_scikit_learn_s_digits_without_importing_it():
    """Read from scikit-learn's own file, as its `load_digits` reads it, in a process that never imports scikit-learn
    (its import took longer than the demo's epochs, in every worker)."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    digits = load_digits()
    full = data.open_source("builtin:digits")
    assert np.array_equal(full.labels, digits.target)
    assert np.array_equal(full.pixels[:, 0], (digits.images / 16.0).astype(np.float32))
    probe = ("import sys; from graft_trainer import data; data.open_source('builtin:digits'); "
             "print('sklearn' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "False\n"
