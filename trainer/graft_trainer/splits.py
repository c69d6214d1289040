"""How many images each split a job's stages use holds, recorded in the ledger (`Ledger.splits`, `stage_splits`) for
the intervals beside every accuracy and the small-validation warning (`graft/uncertainty.py`).

The counts come from the very sources the stages train and score on (`data.target_sets`, `data.own_sets`), not from
a second reading of the spec, so they cannot drift from what was used."""

from __future__ import annotations

from graft.ledger import Ledger
from graft_trainer import data as data_mod
from graft_trainer import registry
from graft_trainer.context import StageContext


def target_splits(ctx: StageContext) -> dict[str, data_mod.Source]:
    """The job's target data by split: "train", "validation" and (with a test set) "test", as the stages use them."""
    train, val = ctx.target_data()
    test = ctx.test_data()
    return {"train": train, "validation": val, **({"test": test} if test is not None else {})}


def target_sizes(ctx: StageContext) -> dict[str, int]:
    """{"train", "validation", "test"} image counts of the job's target data (no "test" without a test set)."""
    return {name: len(source) for name, source in target_splits(ctx).items()}


def own_sizes(ctx: StageContext) -> dict[str, dict[str, int]]:
    """By stage type, the {"train", "validation"} counts of each stage that trains on its own data set."""
    sizes = {}
    for stage in ctx.spec.stages:
        recipe = getattr(registry.kind(stage.type), "recipe", None)
        if recipe is not None and recipe.own_data:
            train, val = data_mod.own_sets(stage, ctx.spec.data)
            sizes[stage.type] = {"train": len(train), "validation": len(val)}
    return sizes


def record(ledger: Ledger, ctx: StageContext) -> None:
    """Put the job's split sizes in the ledger (the caller saves it)."""
    ledger.splits = target_sizes(ctx)
    ledger.stage_splits = own_sizes(ctx)
