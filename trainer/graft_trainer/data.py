"""Labelled image sets: ImageFolder trees (local or `s3://`), manifest tables (`tables.py`) and the offline built-in
digits sets.

A `Source` is a listed, not yet decoded, collection (file URIs or built-in pixels plus labels). Decoding
gives float32 tensors `[N, 3, S, S]` in [0, 1]; normalisation (the weights' preset) and augmentation are
applied per batch. Training loops read an `ImageSet`: the decoded set kept in memory when it fits the
worker's budget, else decoded batch by batch from storage.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import torch
import torch.nn.functional as F

from graft import storage
from graft.api.models import parse_quantity
from graft_trainer import tables
from graft_trainer.decoding import LISTED_PROBLEMS as LISTED_PROBLEMS
from graft_trainer.decoding import decode_image as decode_image
from graft_trainer.decoding import image_problem as image_problem
from graft_trainer.decoding import images_error as images_error
from graft_trainer.decoding import try_decode as try_decode
from graft_trainer.errors import InputError
from graft_trainer.tables import is_table as is_table
from graft_trainer.transforms import Resize
from graft_trainer.transforms import augment as augment
from graft_trainer.transforms import normalize as normalize
from graft_trainer.transforms import resize_of as resize_of

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")

#: The built-in sets are fixed (same images on every machine): these seeds are part of their definition.
_DIGITS_SPLIT_SEED = 1234
_DIGITS_NOISE_SEED = 4321
DIGITS_NOISE_SIGMA = 0.4


@dataclass
class Source:
    """A labelled image collection: file URIs (ImageFolder) or in-memory pixels (built-in)."""

    uri: str
    classes: list[str]
    labels: np.ndarray
    files: list[str] | None = None
    pixels: np.ndarray | None = None
    hflip: bool = True

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> Source:
        index = np.asarray(index, dtype=np.int64)
        files = [self.files[i] for i in index] if self.files is not None else None
        pixels = self.pixels[index] if self.pixels is not None else None
        return replace(self, labels=self.labels[index], files=files, pixels=pixels)

    def images(self, size: int, threads: int = 8, compact: bool = False, resize: Resize | None = None
               ) -> torch.Tensor:
        """Decode every image to float32 `[N, 3, size, size]` in [0, 1].

        `compact`: decoded files stay uint8 (0-255), a quarter of the memory; `as_float` converts a batch.
        `resize`: a timm model's (`resize_of`); files only. Built-in sets are float pixels already (and small) and
        come back as they are."""
        if self.pixels is not None:
            x = torch.from_numpy(np.ascontiguousarray(self.pixels, dtype=np.float32))
            if x.shape[-1] != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            return x
        assert self.files is not None
        if not self.files:
            return torch.zeros((0, 3, size, size))
        with ThreadPoolExecutor(max_workers=threads) as pool:
            decoded = decode_files(self.files, size, pool, resize)
        return decoded if compact else as_float(decoded)


def as_float(x: torch.Tensor) -> torch.Tensor:
    """A batch as float32 in [0, 1], from uint8 (compact decoded images) or float (left as it is)."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def keep_budget(memory: str) -> int:
    """How many bytes of decoded images a worker keeps in memory: a quarter of its memory (a Kubernetes
    quantity, `spec.workers.memory`); the rest is for the model, optimizer, activations and Ray."""
    return int(parse_quantity(memory)) // 4


def in_process_budget(spec) -> int:
    """Bytes of stored features a stage may hold in the driver's process: a quarter of the smaller of a worker's
    and the Ray head pod's memory (the driver runs on the head)."""
    return min(keep_budget(spec.workers.memory), keep_budget(spec.scheduling.head.memory))


def decoded_bytes(source: Source, size: int) -> int:
    """The memory the decoded set takes as uint8."""
    return len(source) * 3 * size * size


def streams(source: Source, size: int, budget: int) -> bool:
    """Whether training reads this set from storage batch by batch (it does not fit `budget`)."""
    return source.pixels is None and decoded_bytes(source, size) > budget


class ImageSet:
    """The images a training loop reads batch by batch.

    Decoded once and kept (uint8) when they fit `budget` bytes; otherwise decoded from storage batch by batch
    every epoch, the next batch while the current one trains, so a worker's memory holds two batches rather
    than the whole set. Both give the same float32 batches in [0, 1]."""

    def __init__(self, source: Source, size: int, budget: int, threads: int = 8, resize: Resize | None = None):
        self.source, self.size, self.threads, self.resize = source, size, threads, resize
        self.nbytes = decoded_bytes(source, size)
        self.streaming = streams(source, size, budget)
        self._kept = None if self.streaming else source.images(size, threads, compact=True, resize=resize)

    def __len__(self) -> int:
        return len(self.source)

    def _decode(self, index: torch.Tensor, pool: ThreadPoolExecutor) -> torch.Tensor:
        assert self.source.files is not None
        return decode_files([self.source.files[i] for i in index.tolist()], self.size, pool, self.resize)

    def batches(self, index: torch.Tensor, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(indices, float images) for consecutive slices of `index`, `batch` at a time."""
        slices = [index[s : s + batch] for s in range(0, len(index), batch)]
        if self._kept is not None:
            for b in slices:
                yield b, as_float(self._kept[b])
            return
        with ThreadPoolExecutor(self.threads) as pool, ThreadPoolExecutor(1) as ahead:
            pending = ahead.submit(self._decode, slices[0], pool) if slices else None
            for i, b in enumerate(slices):
                assert pending is not None
                x = pending.result()
                pending = ahead.submit(self._decode, slices[i + 1], pool) if i + 1 < len(slices) else None
                yield b, as_float(x)


# ------------------------------------------------------------------------------------------ decoding


def list_images(uri: str) -> list[str]:
    """The image files under a folder (local or an object-store prefix), recursively, sorted, hidden ones left out as
    an ImageFolder's are; a URI that is not a folder is returned as it is (a file, or a path that may not exist)."""
    if not storage.is_dir(uri):
        return [uri]
    base = uri.rstrip("/")
    found = []
    for file in storage.list_dir(uri, recursive=True):
        parts = file[len(base) + 1 :].split("/") if storage.is_remote(base) else Path(file).relative_to(base).parts
        if parts[-1].lower().endswith(IMAGE_EXTENSIONS) and not any(p.startswith(".") for p in parts):
            found.append(file)
    return found


def decode_files(uris: list[str], size: int, pool: ThreadPoolExecutor, resize: Resize | None = None) -> torch.Tensor:
    """Decode image files on `pool` to one uint8 tensor `[N, 3, size, size]`, in the order given."""
    return torch.from_numpy(np.stack(list(pool.map(lambda uri: decode_image(uri, size, resize), uris))))


#: How many images of a streamed set are decoded before the first stage (besides the first of each class).
CHECK_SAMPLE = 64


def check_sample(source: Source, seed: int, size: int | None = None) -> Source:
    """A sample of a set to decode up front: the first image of every class and `size` (CHECK_SAMPLE) others."""
    size = CHECK_SAMPLE if size is None else size
    firsts = [int(np.flatnonzero(source.labels == c)[0]) for c in np.unique(source.labels)]
    rng = np.random.RandomState(seed)
    others = rng.choice(len(source), size=min(size, len(source)), replace=False) if len(source) else []
    return source.subset(np.unique(np.concatenate([np.asarray(firsts, dtype=np.int64), others]).astype(np.int64)))


def verify_images(source: Source, threads: int = 8, of: int | None = None) -> None:
    """Check that every file of an ImageFolder source decodes (the run-time check for corrupt images). Reads them
    all and raises one InputError listing every unreadable file (`images_error`), not just the first. `of`: the
    whole set's size when `source` is a sample of it (`check_sample`)."""
    if source.files is None:
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        found = list(pool.map(image_problem, source.files))
    problems = [(uri, reason) for uri, reason in zip(source.files, found, strict=True) if reason]
    if problems:
        raise images_error(source.uri, problems, len(source.files), of)


# ------------------------------------------------------------------------------------------- listing


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (images [N, 8, 8] in 0..16, labels), read as `sklearn.datasets.load_digits` reads
    them (sklearn/datasets/_base.py: `np.loadtxt` of data/digits.csv.gz, the label last) without importing scikit-learn:
    its import (scipy.stats, pandas) took longer than the demo's epochs, in the driver and in every worker."""
    import gzip
    import importlib.util
    import os

    package = importlib.util.find_spec("sklearn")  # finds the package without running its __init__
    assert package is not None and package.submodule_search_locations
    path = os.path.join(package.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
    with gzip.open(path) as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


def _builtin(name: str) -> Source:
    images, target = _digits()
    x = (images / 16.0).astype(np.float32)  # [N, 8, 8] in [0, 1]
    y = target
    perm = np.random.RandomState(_DIGITS_SPLIT_SEED).permutation(len(y))
    half = len(y) // 2
    hflip = False  # a mirrored digit is another symbol
    if name == "digits-clean":
        x, y = x[perm[:half]], y[perm[:half]]
    elif name == "digits-noisy":
        x, y = x[perm[half:]], y[perm[half:]]
        x = x + np.random.RandomState(_DIGITS_NOISE_SEED).normal(0.0, DIGITS_NOISE_SIGMA, x.shape).astype(np.float32)
    elif name != "digits":
        raise InputError(f"builtin:{name}", "unknown built-in data set; known: digits, digits-clean, digits-noisy")
    pixels = np.repeat(x[:, None, :, :], 3, axis=1)
    return Source(uri=f"builtin:{name}", classes=[str(i) for i in range(10)], labels=y, pixels=pixels, hflip=hflip)


def _image_folder(uri: str) -> Source:
    fs, root = storage.filesystem(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=False))
    except FileNotFoundError:
        raise InputError(uri, "not found (expected an ImageFolder: one sub-folder of images per class)") from None
    except OSError as exc:
        raise storage.explain(uri, exc) from exc
    class_dirs: set[str] = set()
    per_class: dict[str, list[str]] = {}
    for info in infos:
        rel = posixpath.relpath(info.path, root)
        parts = rel.split("/")
        if info.type == pafs.FileType.Directory:
            if len(parts) == 1 and not parts[0].startswith("."):
                class_dirs.add(parts[0])
            continue
        if len(parts) < 2 or parts[0].startswith(".") or parts[-1].startswith("."):
            continue
        class_dirs.add(parts[0])
        if parts[-1].lower().endswith(IMAGE_EXTENSIONS):
            per_class.setdefault(parts[0], []).append(storage.join(uri.rstrip("/"), *parts))
    if not class_dirs:
        raise InputError(uri, "no class folders found (expected an ImageFolder: one sub-folder of images per class)")
    empty = sorted(c for c in class_dirs if not per_class.get(c))
    if empty:
        raise InputError(
            storage.join(uri.rstrip("/"), empty[0]),
            f"class folder has no images ({', '.join(IMAGE_EXTENSIONS)}); empty class folders: {empty}",
        )
    classes = sorted(class_dirs)
    files: list[str] = []
    labels: list[int] = []
    for i, c in enumerate(classes):
        for f in sorted(per_class[c]):
            files.append(f)
            labels.append(i)
    return Source(uri=uri, classes=classes, labels=np.asarray(labels, dtype=np.int64), files=files)


def open_source(uri: str, columns: tuple[str, str] = ("path", "label"), classes: list[str] | None = None) -> Source:
    """List a data set: `builtin:<name>`, an ImageFolder at a local path, `file://` or `s3://` prefix, or a manifest
    table (`.csv`, `.parquet`, `.jsonl`) with `columns` (path, label); `classes`: a manifest's labels must be
    these (a validation or test table against the training set's)."""
    if uri.startswith("builtin:"):
        return _builtin(uri[len("builtin:") :])
    if is_table(uri):
        classes_, labels, files = tables.list_table(uri, *columns, classes)
        return Source(uri=uri, classes=classes_, labels=np.asarray(labels, dtype=np.int64), files=files)
    return _image_folder(uri)


def columns_of(data) -> tuple[str, str]:
    """A data spec's manifest column names (path, label), defaults filled in."""
    return (data.path_column or "path", data.label_column or "label")


# -------------------------------------------------------------------------------------------- splits


def split(source: Source, fraction: float, seed: int) -> tuple[Source, Source]:
    """Stratified hold-out: `fraction` of each class goes to validation (at least one image each)."""
    rng = np.random.RandomState(seed)
    train_idx, val_idx = [], []
    for c in np.unique(source.labels):
        idx = np.flatnonzero(source.labels == c)
        rng.shuffle(idx)
        n_val = max(1, round(len(idx) * fraction)) if len(idx) > 1 else 0
        val_idx.extend(idx[:n_val])
        train_idx.extend(idx[n_val:])
    return source.subset(np.sort(train_idx)), source.subset(np.sort(val_idx))


def few_shot(source: Source, shots: int, seed: int) -> Source:
    """Keep `shots` images per class (all of a class that has fewer)."""
    rng = np.random.RandomState(seed + 7919)
    keep = []
    for c in np.unique(source.labels):
        idx = np.flatnonzero(source.labels == c)
        rng.shuffle(idx)
        keep.extend(idx[:shots])
    return source.subset(np.sort(keep))


#: Offsets the test split's random stream from the validation split's (same `seed`, independent draws).
_TEST_SEED_OFFSET = 104_729


def target_sets(data) -> tuple[Source, Source, Source | None]:
    """(train, validation, test or None) of a `spec.data`. The test set (`test`, or `testFraction` of `train`,
    stratified and seeded) is split off before anything else, so no validation split or few-shot draw ever sees
    it; nothing chooses anything by it."""
    columns = columns_of(data)
    train = open_source(data.train, columns)
    test = None
    if data.test:
        test = open_source(data.test, columns, train.classes if is_table(data.test) else None)
        if test.classes != train.classes:
            raise InputError(data.test, f"test classes {test.classes} differ from the training classes {train.classes}")
    elif data.test_fraction:
        train, test = split(train, data.test_fraction, data.seed + _TEST_SEED_OFFSET)
    train, val = train_val(train, data.validation, data.validation_split, data.seed, data.shots_per_class, columns)
    return train, val, test


def own_sets(stage, data) -> tuple[Source, Source]:
    """(train, validation) of a stage that trains on its own `data` set (Pretrain): its stratified validation split,
    by the job's `validationSplit` and `seed`."""
    return train_val(stage.data, None, data.validation_split, data.seed)


def train_val(train_uri: str | Source, validation_uri: str | None, fraction: float, seed: int,
              shots: int | None = None, columns: tuple[str, str] = ("path", "label")):
    """The (train, validation) sources of a data spec: explicit validation set or a stratified split."""
    train = open_source(train_uri, columns) if isinstance(train_uri, str) else train_uri
    if validation_uri:
        val = open_source(validation_uri, columns, train.classes if is_table(validation_uri) else None)
        if val.classes != train.classes:
            raise InputError(
                validation_uri, f"validation classes {val.classes} differ from the training classes {train.classes}"
            )
    else:
        train, val = split(train, fraction, seed)
    if shots:
        train = few_shot(train, shots, seed)
    return train, val
