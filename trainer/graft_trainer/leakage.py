"""Leakage: the same image in two splits that must not share one (train, validation and test of the target; a
Pretrain set and the target's test split). Found by content: the SHA-256 of a file's bytes, or of a built-in
image's pixels, so a copy under another name or in another folder is found too. Near-duplicates (a re-encoded or
resized copy) are not: exact copies are what a careless split or a merged download produces."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from graft import storage
from graft_trainer.data import Source

#: How many shared images a finding names (each by its path in the first split).
EXAMPLES = 3


@dataclass(frozen=True)
class Overlap:
    """Images found in both `first` and `second`: how many, and a few of them by name."""

    first: str
    second: str
    count: int
    examples: tuple[str, ...]

    def __str__(self) -> str:
        named = ", ".join(self.examples)
        return (f"{self.count} image(s) of the {self.second} split are also in the {self.first} split "
                f"(e.g. {named}): scores on {self.second} overstate what the model learned")


def _file_hash(uri: str) -> str:
    return hashlib.sha256(storage.read_bytes(uri)).hexdigest()


def fingerprints(source: Source, threads: int = 8,
                 read: Callable[[str], str] = _file_hash) -> dict[str, str]:
    """Content hash -> a name for it (file URI, or `uri[index]` for a built-in image), one entry per content."""
    if source.pixels is not None:
        names = (f"{source.uri}[{i}]" for i in range(len(source)))
        hashes = (hashlib.sha256(np.ascontiguousarray(px).tobytes()).hexdigest() for px in source.pixels)
        pairs: Iterable[tuple[str, str]] = zip(hashes, names, strict=True)
    else:
        files = source.files or []
        with ThreadPoolExecutor(max_workers=threads) as pool:
            pairs = list(zip(pool.map(read, files), files, strict=True))
    found: dict[str, str] = {}
    for digest, name in pairs:
        found.setdefault(digest, name)
    return found


def overlaps(splits: dict[str, Source], pairs: Iterable[tuple[str, str]]) -> list[Overlap]:
    """The overlaps between each (first, second) pair of named splits; pairs naming an absent split are skipped."""
    prints = {name: fingerprints(source) for name, source in splits.items()}
    found = []
    for first, second in pairs:
        if first not in prints or second not in prints:
            continue
        shared = sorted(set(prints[first]) & set(prints[second]), key=lambda h: prints[first][h])
        if shared:
            found.append(Overlap(first, second, len(shared), tuple(prints[first][h] for h in shared[:EXAMPLES])))
    return found


#: The pairs that must not share an image, in the order a finding is reported.
TARGET_PAIRS = (("train", "validation"), ("train", "test"), ("validation", "test"))
#: Above this many images in all, a run does not check on its own (every file is read once more): `graft validate
#: --check-data` checks whatever the size.
RUN_LIMIT = 20_000


def job_splits(context, spec) -> tuple[dict[str, Source], list[tuple[str, str]]]:
    """The job's named splits (the target's train, validation, test; each stage's own data set, e.g. Pretrain's)
    and the pairs that must not share an image: the target's among themselves, and a stage's own set against the
    target's validation and test (a Pretrain on the target's own folder has seen the images it is scored on)."""
    from graft_trainer import data as data_mod
    from graft_trainer.splits import target_splits

    splits = target_splits(context)
    pairs = list(TARGET_PAIRS)
    for stage in spec.stages:
        uri = getattr(stage, "data", None)
        if uri:
            name = f"{stage.type} data"
            splits[name] = data_mod.open_source(uri)
            pairs += [(name, "validation"), (name, "test")]
    return splits, pairs


def job_findings(context, spec, limit: int | None = None) -> list[str] | None:
    """One line per overlap of the job's splits (`job_splits`); None when the splits hold more than `limit` images
    (not checked)."""
    splits, pairs = job_splits(context, spec)
    if limit is not None and sum(len(s) for s in splits.values()) > limit:
        return None
    return [str(o) for o in overlaps(splits, pairs)]


def record(ledger, context, spec) -> bool:
    """Check the job's splits once per run folder, before its first stage, and keep what was found in the ledger
    (`leakage`; said as a warning here, in `graft run`'s summary and in `graft status`). A job too large to check
    on its own (`RUN_LIMIT`) is left unchecked (None) and said so. True when the ledger changed."""
    import logging

    if ledger.leakage is not None:
        return False
    log = logging.getLogger(__name__)
    try:
        found = job_findings(context, spec, RUN_LIMIT)
    except Exception as exc:  # a check that warns never fails the job: the stages read the data themselves
        log.warning("leakage not checked: %s: %s", type(exc).__name__, exc)
        return False
    if found is None:
        log.info("leakage not checked: more than %d images; graft validate --check-data checks them", RUN_LIMIT)
        return False
    ledger.leakage = found
    for line in found:
        log.warning("leakage: %s", line)
    return True
