"""The built-in stage types (the LP-FT recipe of DESIGN.md): Pretrain, FrozenFeatures, Head and FullFineTune, each
with everything Graft knows about it declared once (see `stagetype.StageType`). `registry.py` lists them.

A run goes through the context's executor (`executors.py`: Ray, or in-process), so the wiring between stages
(which output feeds which stage) is the same code either way. Workers get a `StageConfig`, typed and pickled as it
is.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any, ClassVar

from graft import storage
from graft.ledger import Ledger
from graft_trainer import data as data_mod
from graft_trainer import interpolate, learning, loops, models, scoring, sweep
from graft_trainer.config import StageConfig, run_name
from graft_trainer.context import StageContext, verify_up_front
from graft_trainer.errors import InputError
from graft_trainer.stagetype import StageResult, StageType

__all__ = ["STAGE_TYPES", "FrozenFeatures", "FullFineTune", "Head", "Pretrain", "StageConfig", "StageResult",
           "StageType", "run_name", "verify_up_front"]


class NetworkStage(StageType):
    """A network trained by `loops.train_network` on the executor's workers, as its `recipe` says; its result is the
    best checkpoint by its monitor."""

    recipe: ClassVar[loops.NetworkRecipe]

    def run(self, ctx: StageContext, cfg: StageConfig) -> StageResult:
        loop = partial(loops.train_network, recipe=self.recipe)
        state, checkpoint = ctx.executor.fit(loop, cfg, getattr(cfg.stage, "keep_checkpoints", 2))
        if state is None:
            raise RuntimeError(f"{cfg.run_name}: the run reported no checkpoint")
        out = self.output(ctx.root)
        models.save_tensors(out, state["model"])
        epoch = state["epoch"]
        skip = ("epoch", "resumed_from", "selection", "stopped_early")
        metrics = {k: v for k, v in state["history"][epoch - 1].items() if k not in skip}
        # The best checkpoint's history ends at its epoch; the ledger's goes on to where the stage stopped.
        stop, last = loops.stop_reason(cfg.stage, ctx.ledger().stage(self.type).history)
        return StageResult({**metrics, "best_epoch": float(epoch)}, out, checkpoint, stop=stop, epoch=last)


    def evidence(self, ctx: StageContext, cfg: StageConfig, result: StageResult) -> learning.Evidence:
        history = ctx.ledger().stage(self.type).history
        labels, classes = self.validation(ctx, cfg)
        return learning.Evidence(result.metrics.get("val_accuracy"), labels, classes, len(history),
                                 [h["train_loss"] for h in history if "train_loss" in h])

    def validation(self, ctx: StageContext, cfg: StageConfig) -> tuple[Any, int]:
        """(the validation split's labels, the number of classes) the stage was scored on."""
        return ctx.target_data()[1].labels, ctx.spec.model.num_classes


class Pretrain(NetworkStage):
    """Trains the backbone on a labelled source set: from `spec.model.weights` when given, else from scratch."""

    type = "Pretrain"
    recipe = loops.NetworkRecipe(own_data=True)
    makes_backbone = True
    paths = ("data",)
    # Pretrain trains on its own `data` with its own `numClasses`; the target set and its class count come later.
    not_determining = {"model": ("numClasses",), "data": ("train", "validation", "shotsPerClass")}
    # No early stopping and the best checkpoint by validation accuracy, as before.
    neutral = {"stage": {"patience": None, "monitor": "val_accuracy"}}

    def check(self, ctx: StageContext, stage: Any) -> None:
        src = data_mod.open_source(stage.data)
        if len(src.classes) != stage.num_classes:
            raise InputError(
                stage.data, f"has {len(src.classes)} classes but the Pretrain stage's numClasses is {stage.num_classes}"
            )
        verify_up_front(ctx.spec, src)
        ctx.check_weights()

    def inputs(self, ctx: StageContext, ledger: Ledger) -> dict[str, Any]:
        return {"init_backbone": ctx.weights()}

    def validation(self, ctx: StageContext, cfg: StageConfig) -> tuple[Any, int]:
        stage, data = cfg.stage, ctx.spec.data
        return data_mod.train_val(stage.data, None, data.validation_split, data.seed)[1].labels, stage.num_classes

    def model(self, ctx: StageContext, ledger: Ledger) -> tuple[dict, list[str], int] | None:
        stage = ctx.stage(self.type)
        state = models.read_state_dict(ledger.stage(self.type).output)
        return state, data_mod.open_source(stage.data).classes, stage.num_classes


class FrozenFeatures(StageType):
    type = "FrozenFeatures"
    # Features do not depend on the target's class count, the inference batch size or the actor pool.
    not_determining = {"model": ("numClasses",), "stage": ("batchSize", "actors")}

    def inputs(self, ctx: StageContext, ledger: Ledger) -> dict[str, Any]:
        return {"init_backbone": ctx.init_backbone(ledger)}

    def output(self, root: str) -> str:
        return storage.join(root, "features")

    def run(self, ctx: StageContext, cfg: StageConfig) -> StageResult:
        train, val = ctx.target_data()
        sets = {"train": train, "val": val, **({"test": ctx.test_data()} if ctx.test_data() else {})}
        out = self.output(ctx.root)
        return StageResult(ctx.executor.features(cfg, sets, out), out)


class Head(StageType):
    """The sweep of heads on the stored features only (`sweep.py`); its output is the chosen `nn.Linear` state_dict
    as it is. Runs in the driver's process when the features fit in memory, else on the worker group."""

    type = "Head"
    candidate = "LP (Head on the frozen backbone)"
    # The sweep and patience changed what it does: see `as_recorded`.
    neutral = {"stage": {"monitor": "val_accuracy", "labelSmoothing": None}}

    def as_recorded(self, stage: dict[str, Any]) -> dict[str, Any]:
        """The form ledgers recorded before the sweep (`lr`, `weightDecay` one value each), when it does what the
        Head did then: one setting, no label smoothing, no early stopping, best epoch by validation accuracy.
        Otherwise (the sweep, the default patience of 20, ...) as it is: its hash then matches no older ledger."""
        sweep_ = stage.get("sweep") or {}
        lrs, decays, smoothings = sweep_.get("lr", []), sweep_.get("weightDecay", []), sweep_.get("labelSmoothing", [])
        single = len(lrs) == 1 and len(decays) == 1 and smoothings == [0.0]
        if not (single and stage.get("patience") is None and stage.get("monitor") == "val_accuracy"):
            return stage
        drop = ("sweep", "labelSmoothing", "patience", "monitor")
        return {**{k: v for k, v in stage.items() if k not in drop}, "lr": lrs[0], "weightDecay": decays[0]}

    def run(self, ctx: StageContext, cfg: StageConfig) -> StageResult:
        features = ctx.ledger().stage("FrozenFeatures").metrics
        rows = sum(v for k, v in features.items() if k.endswith("_images"))
        if rows * features.get("feature_dim", 0) * 4 <= data_mod.in_process_budget(ctx.spec):
            state, checkpoint = ctx.executor.in_process(sweep.train_head, cfg)
        else:
            state, checkpoint = ctx.executor.fit(sweep.train_head, cfg, 2, latest=True)
        if state is None:
            raise RuntimeError(f"{cfg.run_name}: the run reported no checkpoint")
        out = self.output(ctx.root)
        models.save_tensors(out, state["head"])
        row = state["table"][state["chosen"]]
        metrics = {k: v for k, v in state["history"][-1].items() if k not in ("epoch", "resumed_from", "stopped_early")}
        metrics.update(val_accuracy=row["val_accuracy"], val_loss=row["val_loss"], best_epoch=row["best_epoch"])
        return StageResult(metrics, out, checkpoint, sweep=state["table"], chosen=state["chosen"], stop=state["stop"],
                           epoch=state["epoch"])

    def check(self, ctx: StageContext, stage: Any) -> None:
        pass  # reads only the stored features

    def evidence(self, ctx: StageContext, cfg: StageConfig, result: StageResult) -> learning.Evidence:
        history = ctx.ledger().stage(self.type).history
        found = scoring.stored_features(cfg.features, "val") if cfg.features else None
        # Every setting's validation score was looked at after every epoch: the result is the best of all of them.
        return learning.Evidence(result.metrics.get("val_accuracy"), found[1].numpy() if found else None,
                                 ctx.spec.model.num_classes, len(result.sweep or [None]) * max(1, len(history)),
                                 [h["train_loss"] for h in history if "train_loss" in h])

    def inputs(self, ctx: StageContext, ledger: Ledger) -> dict[str, Any]:
        return {"features": ledger.stage("FrozenFeatures").output}

    def logits(self, ctx: StageContext, cfg: StageConfig, output: str, split: str) -> tuple[Any, Any] | None:
        found = scoring.stored_features(cfg.features, split) if cfg.features else None
        if found is None:
            return None
        x, labels = found
        return scoring.head_logits(models.read_tensors(output), x), labels

    def model(self, ctx: StageContext, ledger: Ledger) -> tuple[dict, list[str], int] | None:
        net = ctx.build_net()
        backbone = ctx.init_backbone(ledger)
        if backbone:
            models.load_weights(net, backbone)
        models.load_head(net, ledger.stage(self.type).output)
        return net.state_dict(), ctx.target_data()[0].classes, ctx.spec.model.num_classes


class FullFineTune(NetworkStage):
    type = "FullFineTune"
    recipe = loops.NetworkRecipe(fine_tune=True)
    candidate = "FullFineTune"
    # How many checkpoints are kept (the best is always among them) and the GPU memory format.
    not_determining = {"stage": ("keepCheckpoints", "channelsLast")}
    # No early stopping and the best checkpoint by validation accuracy, as before; no weight interpolation.
    neutral = {"stage": {"patience": None, "monitor": "val_accuracy", "interpolate": "off",
                         "interpolationAlpha": None}}
    added_empty = ("layerDecay",)

    def inputs(self, ctx: StageContext, ledger: Ledger) -> dict[str, Any]:
        head = ledger.stage("Head").output if ctx.stage("Head") else None
        return {"init_backbone": ctx.init_backbone(ledger), "init_head": head}

    def logits(self, ctx: StageContext, cfg: StageConfig, output: str, split: str) -> tuple[Any, Any] | None:
        source = ctx.target_data()[1] if split == "val" else ctx.test_data()
        if source is None:
            return None
        net = ctx.build_net()
        net.load_state_dict(models.read_state_dict(output))
        logits = scoring.network_logits(net, source, ctx.spec.data.image_size, ctx.preprocessing)
        return logits, source.labels

    def scored(self, ctx: StageContext, cfg: StageConfig, result: StageResult) -> StageResult:
        result = super().scored(ctx, cfg, result)
        alphas = interpolate.alphas_of(cfg.stage)
        if not alphas:
            return result
        # The LP model: the backbone the fine-tuning started from, with the Head's head.
        lp_net = ctx.build_net()
        if cfg.init_backbone:
            models.load_weights(lp_net, cfg.init_backbone)
        models.load_head(lp_net, cfg.init_head)
        lp = {k: v.detach().clone() for k, v in lp_net.state_dict().items()}
        ft = models.read_state_dict(result.output)
        size, preset = ctx.spec.data.image_size, ctx.preprocessing
        val, test = ctx.target_data()[1], ctx.test_data()
        rows, best, state = interpolate.curve(lp, ft, alphas, ctx.build_net(), val, size, preset)
        out = storage.join(ctx.root, "outputs", "interpolated.pt")
        models.save_tensors(out, state)
        net = ctx.build_net()
        net.load_state_dict(state)
        val_logits = (scoring.network_logits(net, val, size, preset), val.labels)
        scoring.save_predictions(out, *val_logits)
        test_logits = (scoring.network_logits(net, test, size, preset), test.labels) if test is not None else None
        metrics = {**scoring.metrics(*val_logits, "val"), **scoring.calibration(val_logits, test_logits),
                   **(scoring.metrics(*test_logits, "test") if test_logits else {}), "alpha": rows[best]["alpha"]}
        return replace(result, interpolation={"curve": rows, "alpha": rows[best]["alpha"], "output": out,
                                              "metrics": metrics})

    def model(self, ctx: StageContext, ledger: Ledger) -> tuple[dict, list[str], int] | None:
        state = models.read_state_dict(ledger.stage(self.type).output)
        return state, ctx.target_data()[0].classes, ctx.spec.model.num_classes


#: The built-in stage types, in the recipe's order (`registry.py` registers them).
STAGE_TYPES: tuple[StageType, ...] = (Pretrain(), FrozenFeatures(), Head(), FullFineTune())
