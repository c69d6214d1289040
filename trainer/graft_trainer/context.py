"""`StageContext`: what a stage type gets from the driver (the job's spec, its inputs, its storage root, the executor
its runs go through, the ledger it reports in), instead of the driver itself.

The target data are listed, decoded and class-counted once per job and the weights checked once, whichever stage
asks first; a stage never sees the driver's lease, tracker or ledger writes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

import numpy as np

from graft import storage
from graft.api.models import TransferJobSpec
from graft.ledger import Ledger
from graft_trainer import data as data_mod
from graft_trainer import models, timm_backbone
from graft_trainer.config import StageConfig
from graft_trainer.errors import InputError

Fitted = tuple[dict[str, Any] | None, str | None]  #: a run's chosen checkpoint: its state and URI


class Executor(Protocol):
    """Where a stage's runs go (`executors.py`: a Ray cluster, or this process)."""

    def fit(self, loop: Callable, cfg: StageConfig, keep: int, latest: bool = False) -> Fitted: ...

    def in_process(self, loop: Callable, cfg: StageConfig) -> Fitted: ...

    def features(self, cfg: StageConfig, sets: dict[str, Any], out_uri: str) -> dict[str, float]: ...


def verify_up_front(spec: TransferJobSpec, *sources: data_mod.Source) -> None:
    """Decode every image before the first stage, so a corrupt one fails the job at once, by name: every unreadable
    file of all `sources` (a training set and its validation set) in one error. For a set the workers stream (too
    large to keep) only a sample (`data.check_sample`): reading it all here would take as long as an epoch, so a
    corrupt image outside the sample fails the stage when a worker reaches it, by name as well."""
    budget = data_mod.keep_budget(spec.workers.memory)
    listed = [s for s in sources if s.files is not None]  # built-in sets are pixels already
    if not listed:
        return
    chosen = [data_mod.check_sample(s, spec.data.seed) if data_mod.streams(s, spec.data.image_size, budget) else s
              for s in listed]
    sampled = any(len(c) < len(s) for c, s in zip(chosen, listed, strict=True))
    # One Source of them all, each file once (the same classes: a validation set's are checked against its
    # training set's, and may be the same folder).
    files = dict(zip((f for c in chosen for f in c.files), np.concatenate([c.labels for c in chosen]), strict=True))
    merged = replace(chosen[0], uri=", ".join(dict.fromkeys(c.uri for c in chosen)), files=list(files),
                     labels=np.asarray(list(files.values()), dtype=np.int64))
    data_mod.verify_images(merged, of=len({f for s in listed for f in s.files}) if sampled else None)


class StageContext:
    """One job's data for its stage types: `spec` (local paths made absolute), `root` (its storage), `executor`,
    `preprocessing`, and its inputs, read once. `backbone_stage`: the type of the job's stage whose output is the
    backbone the later stages start from (a stage type's `makes_backbone`), if it has one."""

    def __init__(self, spec: TransferJobSpec, root: str, executor: Executor, backbone_stage: str | None = None):
        self.spec, self.root, self.executor, self.backbone_stage = spec, root, executor, backbone_stage
        self.preprocessing = models.torchvision_preset(spec.model.backbone, spec.model.weights)
        self._target: tuple[data_mod.Source, data_mod.Source] | None = None
        self._test: data_mod.Source | None = None
        self._weights_checked = False

    def ledger(self) -> Ledger:
        """The job's ledger as the stage's runs left it (their epochs, history, checkpoints)."""
        ledger = Ledger.load(self.root)
        assert ledger is not None, "a stage runs after the driver wrote the ledger"
        return ledger

    def target_data(self) -> tuple[data_mod.Source, data_mod.Source]:
        """Train and validation sources of the target set, listed, decoded once and class-counted."""
        if self._target is None:
            d = self.spec.data
            train, val, self._test = data_mod.target_sets(d)
            if len(train.classes) != self.spec.model.num_classes:
                raise InputError(
                    d.train,
                    f"has {len(train.classes)} classes ({', '.join(train.classes[:10])}"
                    f"{' ...' if len(train.classes) > 10 else ''}) but spec.model.numClasses is "
                    f"{self.spec.model.num_classes}",
                )
            verify_up_front(self.spec, train, val, *([self._test] if self._test else []))
            self._target = (train, val)
        return self._target

    def test_data(self) -> data_mod.Source | None:
        """The held-out test set (`spec.data.test` or `testFraction`), or None: scored, never chosen by."""
        self.target_data()
        return self._test

    def stage(self, stage_type: str):
        """The job's stage of that type, or None."""
        return next((s for s in self.spec.stages if s.type == stage_type), None)

    def build_net(self) -> models.GraftNet:
        """A fresh network of the job's backbone and target classes (weights not loaded)."""
        return models.build(self.spec.model.backbone, self.spec.model.num_classes, self.spec.data.image_size)

    def weights(self) -> str | None:
        """Where `spec.model.weights` are read from. `hub`: the timm model's pretrained weights, downloaded once into
        `<root>/weights/` (safetensors) so that a retry, a later stage or a worker never downloads them again."""
        uri = self.spec.model.weights
        if uri != "hub":
            return uri
        name = timm_backbone.model_name(self.spec.model.backbone)
        cached = storage.join(self.root, "weights", "hub-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".safetensors")
        if not storage.exists(cached):
            state = timm_backbone.hub_state_dict(self.spec.model.backbone, self.spec.data.image_size)
            storage.write_bytes(cached, timm_backbone.safetensors_bytes(state))
        return cached

    def check_weights(self) -> None:
        """`spec.model.weights` load into the backbone (file found, torchvision name known, keys and shapes fit); a
        checkpoint's own classifier left out is said here, once."""
        if not self._weights_checked and self.spec.model.weights:
            models.load_weights(self.build_net(), self.weights(), report=True)
            self._weights_checked = True

    def check_target(self) -> None:
        """The target data and (unless a stage of the job makes the backbone from them) the weights, before a stage
        that uses them."""
        self.target_data()
        if self.backbone_stage is None:
            self.check_weights()

    def init_backbone(self, ledger: Ledger) -> str | None:
        """Where the backbone's weights come from: the output of the stage that makes it, else `spec.model.weights`."""
        return ledger.stage(self.backbone_stage).output if self.backbone_stage else self.weights()
