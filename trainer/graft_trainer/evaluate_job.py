"""Which split of a job `graft evaluate` scores (`--split`): the job's data spec from its manifest or its run folder's
ledger, its splits rebuilt by the very code the stages used (`data.target_sets`: same seed, test split first, then
validation, then the few-shot draw), and what the user must know about the one chosen."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from graft import stats, storage
from graft.api.models import DataSpec
from graft_trainer import data as data_mod
from graft_trainer.errors import InputError

#: The values `--split` takes.
SPLITS = ("test", "validation", "train")
#: The stages that choose on the validation split (the Head's sweep; the export's choice between candidates).
CHOOSING = ("Head", "FullFineTune")


@dataclass
class JobSplit:
    """One split of a job: its images, which split it is, in words, and the warnings that go with its score."""

    source: data_mod.Source
    split: str
    described: str
    warnings: list[str] = field(default_factory=list)


def check_split(split: str | None) -> str | None:
    """`--split`'s value, or InputError naming the option and the allowed values."""
    if split is not None and split not in SPLITS:
        raise InputError("--split", f"{split!r} is not a split; use one of {', '.join(SPLITS)}")
    return split


def is_run_folder(data: str) -> bool:
    """Whether DATA is a run folder (graft-runs/<job>, or a job's storage URI): a ledger.json is there."""
    from graft.ledger import LEDGER_FILE

    try:
        return storage.exists(storage.join(data, LEDGER_FILE))
    except (OSError, storage.StorageError, ValueError):
        return False


def from_manifest(path: str) -> tuple[DataSpec, list[str], str]:
    """(data spec, stage types, a name for it) of a TransferJob manifest; InvalidSpec when it is not one."""
    from graft.api.validation import load_job
    from graft_trainer.driver import apply_storage_env

    job = load_job(Path(path).read_text(encoding="utf-8"))
    apply_storage_env(job)
    return job.spec.data, [s.type for s in job.spec.stages], path


def from_run(folder: str) -> tuple[DataSpec, list[str], str]:
    """(data spec, stage types, a name for it) of the job a run folder's ledger recorded."""
    from graft.ledger import Ledger

    ledger = Ledger.load(folder)
    if ledger is None or not ledger.spec:
        raise InputError(folder, "its ledger records no spec (written before 2026-12): evaluate the job's manifest")
    return DataSpec.model_validate(ledger.spec["data"]), [s.type for s in ledger.stages], f"the run {folder}"


def _described(d: DataSpec, split: str, name: str) -> str:
    if split == "test":
        return (f"{d.test} (data.test of {name})" if d.test else
                f"{d.train}: the test split of {name} ({d.test_fraction:g} of each class, seed {d.seed})")
    if split == "validation":
        return (f"{d.validation} (data.validation of {name})" if d.validation else
                f"{d.train}: the validation split of {name} ({d.validation_split:g} of each class, seed {d.seed})")
    shots = f", {d.shots_per_class} per class" if d.shots_per_class else ""
    return f"{d.train}: the training split of {name} (what the stages trained on{shots})"


def job_split(d: DataSpec, stage_types: list[str], name: str, split: str | None) -> JobSplit:
    """The split of the job to score: `split`, else test when the job has a test split, else validation."""
    train, val, test = data_mod.target_sets(d)
    split = split or ("test" if test is not None else "validation")
    if split == "test" and test is None:
        raise InputError("--split", f"{name} has no test split (spec.data.test or spec.data.testFraction); "
                         "use --split validation or --split train")
    source = {"test": test, "validation": val, "train": train}[split]
    warnings = []
    chooses = [t for t in stage_types if t in CHOOSING]
    if split == "validation" and chooses:
        warnings.append("the validation split chose this model (checkpoints, the Head's sweep, the export): its "
                        "accuracy here is optimistic; " + ("--split test scores the held-out images" if test is not
                                                           None else "give spec.data.testFraction for a held-out one"))
    if split == "train":
        warnings.append("the model was trained on these images: their accuracy says nothing about new ones")
    if chooses and (small := stats.small_validation_warning(len(val))):
        warnings.append(small)
    return JobSplit(source, split, _described(d, split, name), warnings)
