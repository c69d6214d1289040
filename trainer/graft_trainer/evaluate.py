"""`graft evaluate`: an exported model's accuracy, per-class precision and recall, and confusion matrix on a
labelled set (an ImageFolder, a built-in set, or one split of a job: its manifest or its run folder)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from graft import stats
from graft_trainer import data as data_mod
from graft_trainer import evaluate_job
from graft_trainer.errors import InputError
from graft_trainer.evaluate_job import JobSplit
from graft_trainer.export import load_model, probabilities

#: How many images are decoded and run at a time.
BATCH = 64

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class Evaluation:
    model: str
    data: str  #: what was evaluated, in words (the set's URI; for a manifest, which of its sets)
    labels: list[str]
    y_true: np.ndarray
    y_pred: np.ndarray
    split: str = ""  #: which of a job's splits (test, validation, train); empty for a data set
    warnings: list[str] = field(default_factory=list)  #: what the score is worth (`evaluate_job.job_split`)

    def report(self) -> dict[str, Any]:
        """Accuracy, per-class precision/recall/F1/support and the confusion matrix (rows: true class, columns:
        predicted), as plain JSON types."""
        from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

        index = list(range(len(self.labels)))
        precision, recall, f1, support = precision_recall_fscore_support(
            self.y_true, self.y_pred, labels=index, zero_division=0
        )
        accuracy = float(accuracy_score(self.y_true, self.y_pred))
        interval = stats.wilson(accuracy, len(self.y_true)) if len(self.y_true) else None
        return {
            "model": self.model,
            "data": self.data,
            **({"split": self.split} if self.split else {}),
            "images": len(self.y_true),
            "correct": int((self.y_true == self.y_pred).sum()),
            "accuracy": accuracy,
            "accuracy_interval": [interval.low, interval.high] if interval else None,
            "n": len(self.y_true),
            "warnings": list(self.warnings),
            "classes": [
                {"label": label, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                for label, p, r, f, s in zip(self.labels, precision, recall, f1, support, strict=True)
            ],
            "confusion_matrix": confusion_matrix(self.y_true, self.y_pred, labels=index).tolist(),
        }


def is_manifest(data: str) -> bool:
    """Whether DATA names a TransferJob manifest (a local YAML or JSON file) rather than a data set."""
    path = Path(data)
    return path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file()


def open_data(data: str, labels: list[str] | None = None, split: str | None = None) -> JobSplit:
    """The labelled set DATA names: for a manifest or a run folder, one of the job's splits (`--split`; default its
    test split, else validation: `evaluate_job.job_split`), else the set itself (`data.open_source`; a table's labels
    checked against the model's `labels`, which it may not all have). Raises InvalidSpec for a manifest that is not a
    valid TransferJob, InputError for a `split` of something that is not a job."""
    split = evaluate_job.check_split(split)
    if is_manifest(data):
        return evaluate_job.job_split(*evaluate_job.from_manifest(data), split)
    if evaluate_job.is_run_folder(data):
        return evaluate_job.job_split(*evaluate_job.from_run(data), split)
    if split is not None:
        raise InputError("--split", f"{data} is a data set, not a job: --split applies to a TransferJob manifest or a "
                         "run folder")
    source = data_mod.open_source(data, classes=labels if data_mod.is_table(data) else None)
    return JobSplit(source, "", data)


def _names(names: list[str], most: int = 20) -> str:
    return str(names[:most])[:-1] + f", ... {len(names) - most} more]" if len(names) > most else str(names)


def evaluate(model: str, data: str, threads: int = 8, split: str | None = None) -> Evaluation:
    """Run the model over every image of DATA. Raises InputError when its classes differ from the model's (by
    name; the order may differ) or when images do not decode (all of them listed), before any metric is made."""
    evaluate_job.check_split(split)  # a bad --split is said before the model is read
    net, meta = load_model(model)
    labels = list(meta["labels"])
    chosen = open_data(data, labels, split)
    source = chosen.source
    if sorted(source.classes) != sorted(labels):
        only_data = [c for c in source.classes if c not in labels]
        only_model = [c for c in labels if c not in source.classes]
        raise InputError(data, f"its classes {_names(source.classes)} differ from the model's labels {_names(labels)} "
                         f"(only in the data: {_names(only_data)}; only in the model: {_names(only_model)})")
    to_model = np.asarray([labels.index(c) for c in source.classes], dtype=np.int64)
    pre = meta["preprocessing"]
    size = pre["image_size"]
    preds, problems = [], []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for start in range(0, len(source), BATCH):
            batch = source.subset(np.arange(start, min(start + BATCH, len(source))))
            if batch.files is None:
                x = batch.images(size, resize=data_mod.resize_of(pre))
            else:
                decoded = list(pool.map(lambda uri: data_mod.try_decode(uri, size, data_mod.resize_of(pre)),
                                        batch.files))
                problems += [(uri, why) for uri, (_, why) in zip(batch.files, decoded, strict=True) if why]
                if problems:  # no metric is made then; reading on only finds the rest of the bad files
                    continue
                x = torch.from_numpy(np.stack([img for img, _ in decoded])).float() / 255.0
            preds.append(probabilities(net, pre, x).argmax(dim=1).numpy())
    if problems:
        raise data_mod.images_error(source.uri, problems, len(source))
    y_pred = np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)
    return Evaluation(model, chosen.described, labels, to_model[source.labels], y_pred, chosen.split, chosen.warnings)
