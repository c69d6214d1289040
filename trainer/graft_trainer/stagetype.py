"""What a stage type is: `StageType`, the one place where everything Graft knows about a type of stage is declared
(its input checks, the earlier outputs it takes, its run, its scoring, its export, which spec fields its result
depends on, whether it is an export candidate), and `StageResult`, what its run returns.

Stage types receive a `StageContext` (`context.py`), never the driver. The built-in types are in `stages.py`; the
registry that the driver, `identity.py` and `selection.py` look them up in is `registry.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from graft import storage
from graft.ledger import Ledger
from graft_trainer import learning, scoring
from graft_trainer.config import StageConfig
from graft_trainer.context import StageContext


@dataclass(frozen=True)
class StageResult:
    metrics: dict[str, float]
    output: str
    checkpoint: str | None = None
    sweep: list[dict[str, float]] | None = None  #: the Head sweep's table, one row per setting
    chosen: int | None = None  #: the row of `sweep` the result is
    stop: str | None = None  #: why the stage ended where it did (early stopping, or all epochs)
    epoch: int | None = None  #: the last epoch run, when the stage stopped early
    interpolation: dict[str, Any] | None = None  #: FullFineTune's weight interpolation: curve, alpha, output, metrics


class StageType:
    """The defaults: checks the target data and weights, takes nothing from earlier stages, exports nothing, and its
    result depends on every field of `spec.model`, `spec.data` and the stage."""

    #: The API model's `type` (graft/api/models.py `Stage`), the key of the registry.
    type: ClassVar[str]
    #: Spec identity (`identity.py`): fields the stage's result does not depend on, per part (`model`, `data`,
    #: `stage`). Everything else counts (the safe side: a field added later counts until it is listed here).
    not_determining: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: Spec identity: fields added after ledgers first recorded hashes (issue 12, 2026-12), per part, at the value
    #: that reproduces what Graft did before them: left out of the hash at exactly that value.
    neutral: ClassVar[dict[str, dict[str, Any]]] = {}
    #: Spec identity: stage fields added after both forms of recorded hashes (issue 13), left out while empty.
    added_empty: ClassVar[tuple[str, ...]] = ()
    #: The export (`selection.py`): what model.json calls the stage's result when it is a classifier of the target
    #: classes, an export candidate; None when it is not.
    candidate: ClassVar[str | None] = None
    #: Its output is the backbone the later stages start from (in place of `spec.model.weights`, which it reads).
    makes_backbone: ClassVar[bool] = False
    #: Stage fields that are local paths or URIs of input data (made absolute: workers run elsewhere).
    paths: ClassVar[tuple[str, ...]] = ()

    def as_recorded(self, stage: dict[str, Any]) -> dict[str, Any]:
        """The stage's fields (JSON, as in the spec view) in the form older ledgers recorded them, when it does what
        that form did (`identity.py`); by default as they are."""
        return stage

    def check(self, ctx: StageContext, stage: Any) -> None:
        """Find bad input before the run starts; raises InputError naming the URI and the cause."""
        ctx.check_target()

    def inputs(self, ctx: StageContext, ledger: Ledger) -> dict[str, Any]:
        """The `StageConfig` fields this stage takes from earlier stages' outputs."""
        return {}

    def output(self, root: str) -> str:
        """Where the stage's result goes (recorded as the stage's `output` in the ledger)."""
        return storage.join(root, "outputs", f"{self.type.lower()}.pt")

    def run(self, ctx: StageContext, cfg: StageConfig) -> StageResult:
        """Run the stage through `ctx.executor`; its result (metrics, output, checkpoint) goes into the ledger."""
        raise NotImplementedError

    def model(self, ctx: StageContext, ledger: Ledger) -> tuple[dict, list[str], int] | None:
        """The exported model (state_dict, label names, number of classes) if the job ends with this stage."""
        return None

    def logits(self, ctx: StageContext, cfg: StageConfig, output: str, split: str) -> tuple[Any, Any] | None:
        """(logits, labels) of the stage's result on the `val` or `test` set, or None (no such set, or a stage whose
        result is not a classifier of the target classes)."""
        return None

    def evidence(self, ctx: StageContext, cfg: StageConfig, result: StageResult) -> learning.Evidence | None:
        """What tells whether the stage learned anything (`learning.py`); None for a stage that trains nothing."""
        return None

    def scored(self, ctx: StageContext, cfg: StageConfig, result: StageResult) -> StageResult:
        """The result with its test metrics (`test_accuracy`, `test_loss`) and its calibration (a temperature fitted
        on validation logits, ECE before and after on validation and test) added: measured after the stage chose
        its checkpoint, so the test set never chooses anything. The validation predictions are recorded beside the
        result for the export's paired test (`selection.py`)."""
        val = self.logits(ctx, cfg, result.output, "val")
        if val is None:
            return result
        scoring.save_predictions(result.output, *val)
        test = self.logits(ctx, cfg, result.output, "test")
        metrics = {**result.metrics, **scoring.calibration(val, test)}
        if test is not None:
            metrics.update(scoring.metrics(*test, "test"))
        return replace(result, metrics=metrics)
