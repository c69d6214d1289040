"""The stage registry: one object per stage type with its input checks, its run, its output and its export.

The driver dispatches every stage through `STAGES[type]`; a run goes through the driver's executor
(`executors.py`: Ray, or in-process), so the wiring between stages (which output feeds which stage) is the
same code either way. Workers get a `StageConfig`, typed and pickled as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from graft.trainer import data as data_mod
from graft.trainer import interpolate, loops, models, scoring, selection, sweep
from graft.trainer.errors import InputError

from graft import storage
from graft.api.models import Stage, TransferJobSpec
from graft.lease import Holder
from graft.ledger import Ledger

if TYPE_CHECKING:
    from graft.trainer.driver import Driver


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


def in_process_budget(spec: TransferJobSpec) -> int:
    """Bytes of stored features a stage may hold in the driver's process: a quarter of the smaller of a worker's
    and the Ray head pod's memory (the driver runs on the head)."""
    return min(data_mod.keep_budget(spec.workers.memory), data_mod.keep_budget(spec.scheduling.head.memory))


class StageType:
    """The defaults: checks the target data and weights, takes nothing from earlier stages, exports nothing."""

    type: str

    def check(self, driver: Driver, stage: Any) -> None:
        """Find bad input before the run starts; raises InputError naming the URI and the cause."""
        driver.check_target()

    def inputs(self, driver: Driver, ledger: Ledger) -> dict[str, Any]:
        """The `StageConfig` fields this stage takes from earlier stages' outputs."""
        return {}

    def output(self, root: str) -> str:
        """Where the stage's result goes (recorded as the stage's `output` in the ledger)."""
        return storage.join(root, "outputs", f"{self.type.lower()}.pt")

    def model(self, driver: Driver, ledger: Ledger) -> tuple[dict, list[str], int] | None:
        """The exported model (state_dict, label names, number of classes) if the job ends with this stage."""
        return None

    def logits(self, driver: Driver, cfg: StageConfig, output: str, split: str) -> tuple[Any, Any] | None:
        """(logits, labels) of the stage's result on the `val` or `test` set, or None (no such set, or a stage whose
        result is not a classifier of the target classes)."""
        return None

    def scored(self, driver: Driver, cfg: StageConfig, result: StageResult) -> StageResult:
        """The result with its test metrics (`test_accuracy`, `test_loss`) and its calibration (a temperature fitted
        on validation logits, ECE before and after on validation and test) added: measured after the stage chose
        its checkpoint, so the test set never chooses anything. The validation predictions are recorded beside the
        result for the export's paired test (`selection.py`)."""
        val = self.logits(driver, cfg, result.output, "val")
        if val is None:
            return result
        selection.save_predictions(result.output, *val)
        test = self.logits(driver, cfg, result.output, "test")
        metrics = {**result.metrics, **scoring.calibration(val, test)}
        if test is not None:
            metrics.update(scoring.metrics(*test, "test"))
        return replace(result, metrics=metrics)


class TrainingStage(StageType):
    """A training loop on the executor's workers; its result is the best checkpoint by val_accuracy."""

    loop = staticmethod(loops.train_network)
    state_key = "model"

    def run(self, driver: Driver, cfg: StageConfig) -> StageResult:
        state, checkpoint = driver.executor.fit(self.loop, cfg, getattr(cfg.stage, "keep_checkpoints", 2))
        if state is None:
            raise RuntimeError(f"{cfg.run_name}: the run reported no checkpoint")
        out = self.output(driver.root)
        models.save_tensors(out, state[self.state_key])
        epoch = state["epoch"]
        skip = ("epoch", "resumed_from", "selection", "stopped_early")
        metrics = {k: v for k, v in state["history"][epoch - 1].items() if k not in skip}
        # The best checkpoint's history ends at its epoch; the ledger's goes on to where the stage stopped.
        stop, last = loops.stop_reason(cfg.stage, Ledger.load(driver.root).stage(self.type).history)
        return StageResult({**metrics, "best_epoch": float(epoch)}, out, checkpoint, stop=stop, epoch=last)


class Pretrain(TrainingStage):
    """Trains the backbone on a labelled source set: from `spec.model.weights` when given, else from scratch."""

    type = "Pretrain"

    def check(self, driver: Driver, stage: Any) -> None:
        src = data_mod.open_source(stage.data)
        if len(src.classes) != stage.num_classes:
            raise InputError(
                stage.data, f"has {len(src.classes)} classes but the Pretrain stage's numClasses is {stage.num_classes}"
            )
        verify_up_front(driver.spec, src)
        driver.check_weights()

    def inputs(self, driver: Driver, ledger: Ledger) -> dict[str, Any]:
        return {"init_backbone": driver.weights()}

    def model(self, driver: Driver, ledger: Ledger) -> tuple[dict, list[str], int] | None:
        stage = driver.stage(self.type)
        state = models.read_state_dict(ledger.stage(self.type).output)
        return state, data_mod.open_source(stage.data).classes, stage.num_classes


class FrozenFeatures(StageType):
    type = "FrozenFeatures"

    def inputs(self, driver: Driver, ledger: Ledger) -> dict[str, Any]:
        return {"init_backbone": driver.init_backbone(ledger)}

    def output(self, root: str) -> str:
        return storage.join(root, "features")

    def run(self, driver: Driver, cfg: StageConfig) -> StageResult:
        train, val = driver.target_data()
        sets = {"train": train, "val": val, **({"test": driver.test_data()} if driver.test_data() else {})}
        out = self.output(driver.root)
        return StageResult(driver.executor.features(cfg, sets, out), out)


class Head(TrainingStage):
    """The sweep of heads on the stored features only (`sweep.py`); its output is the chosen `nn.Linear` state_dict
    as it is. Runs in the driver's process when the features fit in memory, else on the worker group."""

    type = "Head"
    loop = staticmethod(sweep.train_head)
    state_key = "head"

    def run(self, driver: Driver, cfg: StageConfig) -> StageResult:
        features = Ledger.load(driver.root).stage("FrozenFeatures").metrics
        rows = sum(v for k, v in features.items() if k.endswith("_images"))
        fits = rows * features.get("feature_dim", 0) * 4 <= in_process_budget(driver.spec)
        if fits:
            state, checkpoint = driver.executor.in_process(self.loop, cfg)
        else:
            state, checkpoint = driver.executor.fit(self.loop, cfg, 2, latest=True)
        if state is None:
            raise RuntimeError(f"{cfg.run_name}: the run reported no checkpoint")
        out = self.output(driver.root)
        models.save_tensors(out, state["head"])
        row = state["table"][state["chosen"]]
        metrics = {k: v for k, v in state["history"][-1].items() if k not in ("epoch", "resumed_from", "stopped_early")}
        metrics.update(val_accuracy=row["val_accuracy"], val_loss=row["val_loss"], best_epoch=row["best_epoch"])
        return StageResult(metrics, out, checkpoint, sweep=state["table"], chosen=state["chosen"], stop=state["stop"],
                           epoch=state["epoch"])

    def check(self, driver: Driver, stage: Any) -> None:
        pass  # reads only the stored features

    def inputs(self, driver: Driver, ledger: Ledger) -> dict[str, Any]:
        return {"features": ledger.stage("FrozenFeatures").output}

    def logits(self, driver: Driver, cfg: StageConfig, output: str, split: str) -> tuple[Any, Any] | None:
        found = scoring.stored_features(cfg.features, split) if cfg.features else None
        if found is None:
            return None
        x, labels = found
        return scoring.head_logits(models.read_tensors(output), x), labels

    def model(self, driver: Driver, ledger: Ledger) -> tuple[dict, list[str], int] | None:
        net = driver.build_net()
        backbone = driver.init_backbone(ledger)
        if backbone:
            models.load_weights(net, backbone)
        models.load_head(net, ledger.stage(self.type).output)
        return net.state_dict(), driver.target_data()[0].classes, driver.spec.model.num_classes


class FullFineTune(TrainingStage):
    type = "FullFineTune"

    def inputs(self, driver: Driver, ledger: Ledger) -> dict[str, Any]:
        head = ledger.stage("Head").output if driver.stage("Head") else None
        return {"init_backbone": driver.init_backbone(ledger), "init_head": head}

    def logits(self, driver: Driver, cfg: StageConfig, output: str, split: str) -> tuple[Any, Any] | None:
        source = driver.target_data()[1] if split == "val" else driver.test_data()
        if source is None:
            return None
        net = driver.build_net()
        net.load_state_dict(models.read_state_dict(output))
        logits = scoring.network_logits(net, source, driver.spec.data.image_size, driver.preprocessing)
        return logits, source.labels

    def scored(self, driver: Driver, cfg: StageConfig, result: StageResult) -> StageResult:
        result = super().scored(driver, cfg, result)
        alphas = interpolate.alphas_of(cfg.stage)
        if not alphas:
            return result
        # The LP model: the backbone the fine-tuning started from, with the Head's head.
        lp_net = driver.build_net()
        if cfg.init_backbone:
            models.load_weights(lp_net, cfg.init_backbone)
        models.load_head(lp_net, cfg.init_head)
        lp = {k: v.detach().clone() for k, v in lp_net.state_dict().items()}
        ft = models.read_state_dict(result.output)
        size, preset = driver.spec.data.image_size, driver.preprocessing
        val, test = driver.target_data()[1], driver.test_data()
        rows, best, state = interpolate.curve(lp, ft, alphas, driver.build_net(), val, size, preset)
        out = storage.join(driver.root, "outputs", "interpolated.pt")
        models.save_tensors(out, state)
        net = driver.build_net()
        net.load_state_dict(state)
        val_logits = (scoring.network_logits(net, val, size, preset), val.labels)
        selection.save_predictions(out, *val_logits)
        test_logits = (scoring.network_logits(net, test, size, preset), test.labels) if test is not None else None
        metrics = {**scoring.metrics(*val_logits, "val"), **scoring.calibration(val_logits, test_logits),
                   **(scoring.metrics(*test_logits, "test") if test_logits else {}), "alpha": rows[best]["alpha"]}
        return replace(result, interpolation={"curve": rows, "alpha": rows[best]["alpha"], "output": out,
                                              "metrics": metrics})

    def model(self, driver: Driver, ledger: Ledger) -> tuple[dict, list[str], int] | None:
        state = models.read_state_dict(ledger.stage(self.type).output)
        return state, driver.target_data()[0].classes, driver.spec.model.num_classes


STAGES: dict[str, StageType] = {s.type: s for s in (Pretrain(), FrozenFeatures(), Head(), FullFineTune())}
