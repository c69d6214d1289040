"""What a stage's workers get (`StageConfig`) and the Ray Train run name of a stage: the bottom layer that the stage
types, the loops, the sessions and the executors all share, so none of them imports another to reach it."""

from __future__ import annotations

from dataclasses import dataclass

from graft.api.models import Stage, TransferJobSpec
from graft.lease import Holder
from graft_trainer import models


def run_name(uid: str, stage: str, resets: int = 0) -> str:
    """Ray Train run name of a stage: unique per job (UID) and stage, and per reset (`--restart`, `--from-stage`)
    so that a reset stage never resumes the checkpoints of the run it replaces."""
    return f"{uid}-{stage.lower()}" + (f"-r{resets}" if resets else "")


@dataclass(frozen=True)
class StageConfig:
    """What a stage's workers get: the (validated) spec, which stage, and the outputs of earlier stages."""

    spec: TransferJobSpec
    index: int
    root: str | None = None  #: the job root: rank 0 records each epoch in its ledger (None: no ledger)
    run_name: str = ""
    init_backbone: str | None = None  #: weights for the backbone (Pretrain's output or spec.model.weights)
    init_head: str | None = None  #: the Head stage's output
    features: str | None = None  #: the FrozenFeatures stage's output
    #: The driver's lease (`graft/lease.py`): every ledger write of the stage checks it still holds it.
    lease: Holder | None = None

    @property
    def stage(self) -> Stage:
        return self.spec.stages[self.index]

    @property
    def preprocessing(self) -> dict[str, list[float]]:
        return models.torchvision_preset(self.spec.model.backbone, self.spec.model.weights)
