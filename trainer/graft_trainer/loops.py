"""The training loops of the stages, written against a `Session` (Ray Train worker or local process).

- `train_network`: Pretrain (from scratch, SGD) and FullFineTune (AdamW, discriminative LR, warm-up +
  cosine, label smoothing, gradient clipping, bf16 autocast and channels_last on GPU).
- (the Head stage's sweep of linear heads on stored features is in `sweep.py`.)
- `extract_features`: the frozen backbone over a batch of images (used by the FrozenFeatures actors).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from graft.api.models import FullFineTuneStage
from graft_trainer import data as data_mod
from graft_trainer import models, timm_backbone
from graft_trainer.config import StageConfig


def _shard(n: int, rank: int, world: int, generator: torch.Generator) -> torch.Tensor:
    """This rank's indices for one epoch: a shared permutation padded so every rank takes as many steps
    (DDP hangs when ranks disagree on the number of steps)."""
    perm = torch.randperm(n, generator=generator)
    per_rank = math.ceil(n / world)
    if per_rank * world > n:
        perm = torch.cat([perm, perm[: per_rank * world - n]])
    return perm[rank::world]


def _schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _resume(session, key: str, module: nn.Module, optimizer, scheduler) -> tuple[int, list[dict[str, float]]]:
    """(first epoch, history) of the session's latest checkpoint, its weights and optimizer state loaded."""
    state = session.load_state()
    if state is None:
        return 0, []
    module.load_state_dict(state[key])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state["epoch"], state["history"]


def _checkpoint(key: str, model: nn.Module, optimizer, scheduler, epoch: int, history, **extra) -> dict:
    """A checkpoint's `state.pt`: the weights under `key`, optimizer, scheduler, epoch, history."""
    weights = (model.module if hasattr(model, "module") else model).state_dict()
    return {
        key: {k: v.detach().cpu() for k, v in weights.items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "history": history,
        **extra,
    }


def _evaluate(session, model, x: data_mod.ImageSet, y, preset, batch, autocast, channels_last) -> tuple[float, float]:
    """(loss, accuracy) over the validation set, sharded across ranks and summed."""
    model.eval()
    idx = torch.arange(session.rank, len(y), session.world_size)
    loss_sum, correct = 0.0, 0.0
    with torch.no_grad():
        for b, xb in x.batches(idx, batch):
            xb = data_mod.normalize(xb.to(session.device), preset["mean"], preset["std"])
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast():
                logits = model(xb).float()
            yb = y[b].to(session.device)
            loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
            correct += (logits.argmax(1) == yb).sum().item()
    loss_sum, correct, count = session.all_sum([loss_sum, correct, float(len(idx))])
    return loss_sum / max(1.0, count), correct / max(1.0, count)


class EarlyStopping:
    """The best epoch by `monitor` (the other metric breaking ties) and early stopping after `patience` epochs
    without improvement. Every epoch's metrics get `selection`: the number of the improvement an improving epoch
    is (1, 2, ...), a non-improving one half a point less than the last; so the highest `selection` is the best
    epoch, for Ray Train's checkpoint ranking and the local session alike. Rebuilt from the history on resume."""

    def __init__(self, monitor: str, patience: int | None, history: list[dict[str, float]]):
        self.monitor, self.patience = monitor, patience
        self.best: tuple[float, float] | None = None
        self.improvements, self.since, self.stopped = 0, 0, False
        for h in history:
            self.update(h, True)
            self.stopped = bool(h.get("stopped_early"))

    def update(self, metrics: dict[str, float], more_epochs: bool) -> dict[str, float]:
        """This epoch's `selection` (and `stopped_early` when it is the last one) to add to its metrics."""
        from graft_trainer.sweep import better

        now = (metrics["val_accuracy"], metrics["val_loss"])
        if self.best is None or better(now, self.best, self.monitor):
            self.best, self.improvements, self.since = now, self.improvements + 1, 0
            out = {"selection": float(self.improvements)}
        else:
            self.since += 1
            out = {"selection": self.improvements - 0.5}
        if self.patience is not None and self.since >= self.patience and more_epochs:
            self.stopped = True
            out["stopped_early"] = 1.0
        return out


def stop_reason(stage, history: list[dict[str, float]]) -> tuple[str, int]:
    """(why the stage ended where it did, the last epoch run) from its history."""
    last = history[-1] if history else {"epoch": 0.0}
    epoch = int(last["epoch"])
    if last.get("stopped_early"):
        return (f"early stop at epoch {epoch} of {stage.epochs}: {stage.monitor} did not improve for "
                f"{stage.patience} epochs"), epoch
    return f"ran all {stage.epochs} epochs", epoch


def fine_tune_optimizer(net: models.GraftNet, stage: FullFineTuneStage) -> torch.optim.AdamW:
    """FullFineTune's AdamW: the head at `lr`, the backbone at `lr * backboneLrScale`. A timm backbone's parameters
    are grouped as timm does for fine-tuning: layer-wise learning-rate decay (`layerDecay`, or the family's default)
    and no weight decay on norms, biases and what the model's `no_weight_decay()` names; nor on the head's bias."""
    backbone_lr = stage.lr * stage.backbone_lr_scale
    if not net.is_timm:
        return torch.optim.AdamW(
            [{"params": net.backbone.parameters(), "lr": backbone_lr},
             {"params": net.head.parameters(), "lr": stage.lr}],
            weight_decay=stage.weight_decay,
        )
    decay = stage.layer_decay if stage.layer_decay is not None else timm_backbone.default_layer_decay(net.arch)
    groups = timm_backbone.param_groups(net.backbone, backbone_lr, stage.weight_decay, decay)
    groups += [{"params": [net.head.weight], "lr": stage.lr, "weight_decay": stage.weight_decay, "lr_scale": 1.0},
               {"params": [net.head.bias], "lr": stage.lr, "weight_decay": 0.0, "lr_scale": 1.0}]
    return torch.optim.AdamW(groups, weight_decay=stage.weight_decay)


@dataclass(frozen=True)
class NetworkRecipe:
    """How `train_network` trains a stage type's network; each stage type that trains one declares its own
    (`stages.py`).

    `own_data`: the stage trains on its own `data` with its own `numClasses` (a source set), else on the job's target
    train and validation sets with `spec.model.numClasses`. `fine_tune`: AdamW with a lower backbone learning rate
    (`fine_tune_optimizer`) and warm-up, and the stage's `precision`, `channelsLast`, `augment` and `gradClipNorm`;
    else SGD with Nesterov momentum, no warm-up, bf16 and channels_last on GPU, augmentation, no clipping."""

    own_data: bool = False
    fine_tune: bool = False

    @classmethod
    def implied_by(cls, stage: Any) -> NetworkRecipe:
        """The recipe a stage's fields imply (its own `data`; fine-tuning's `backboneLrScale`), for a caller that
        runs the loop without its stage type (tests, benchmarks)."""
        return cls(own_data=hasattr(stage, "data"), fine_tune=hasattr(stage, "backbone_lr_scale"))


@dataclass(frozen=True)
class _Options:
    """A network run's per-batch choices: bf16 autocast and channels_last only where they are fast and safe (on
    GPU, never on CPU even if asked), augmentation, gradient clipping."""

    bf16: bool
    channels_last: bool
    augment: bool
    grad_clip: float | None

    @classmethod
    def of(cls, stage: Any, recipe: NetworkRecipe, on_gpu: bool) -> _Options:
        fft = recipe.fine_tune
        return cls(bf16=on_gpu and (not fft or stage.precision != "fp32"),
                   channels_last=on_gpu and (not fft or stage.channels_last),
                   augment=stage.augment if fft else True, grad_clip=stage.grad_clip_norm if fft else None)

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else nullcontext()


@dataclass
class _Sets:
    """A network run's data: images kept decoded (uint8) while a quarter of the worker's memory holds them, else
    streamed from storage."""

    train_src: data_mod.Source
    x_train: data_mod.ImageSet
    y_train: torch.Tensor
    x_val: data_mod.ImageSet
    y_val: torch.Tensor
    num_classes: int

    @classmethod
    def load(cls, cfg: StageConfig, recipe: NetworkRecipe) -> _Sets:
        spec, stage = cfg.spec, cfg.stage
        if recipe.own_data:
            train_src, val_src = data_mod.own_sets(stage, spec.data)
            num_classes = stage.num_classes
        else:
            train_src, val_src, _ = data_mod.target_sets(spec.data)
            num_classes = spec.model.num_classes
        budget, size = data_mod.keep_budget(spec.workers.memory), spec.data.image_size
        resize = data_mod.resize_of(cfg.preprocessing)
        x_train = data_mod.ImageSet(train_src, size, budget, resize=resize)
        x_val = data_mod.ImageSet(val_src, size, budget - (0 if x_train.streaming else x_train.nbytes), resize=resize)
        return cls(train_src, x_train, torch.from_numpy(train_src.labels), x_val, torch.from_numpy(val_src.labels),
                   num_classes)


def _optimizer(net: models.GraftNet, stage: Any, recipe: NetworkRecipe, steps_per_epoch: int
               ) -> tuple[torch.optim.Optimizer, int]:
    """(the optimizer, its warm-up steps)."""
    if recipe.fine_tune:
        return fine_tune_optimizer(net, stage), round(stage.warmup_epochs * steps_per_epoch)
    sgd = torch.optim.SGD(net.parameters(), lr=stage.lr, momentum=0.9, nesterov=True, weight_decay=stage.weight_decay)
    return sgd, 0


@dataclass
class _NetworkRun:
    """One worker's share of a network stage's run: its model (DDP-wrapped), optimizer and data."""

    session: Any
    cfg: StageConfig
    sets: _Sets
    opts: _Options
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    per_rank_batch: int

    def epoch(self, epoch: int, start_epoch: int) -> dict[str, float]:
        """Train one epoch, then evaluate on validation: the epoch's metrics, summed over the ranks."""
        session, sets, opts, stage = self.session, self.sets, self.opts, self.cfg.stage
        preset, world = self.cfg.preprocessing, session.world_size
        self.model.train()
        gen = torch.Generator().manual_seed(self.cfg.spec.data.seed * 100_003 + epoch)
        idx = _shard(len(sets.y_train), session.rank, world, gen)
        loss_sum, seen, t0 = 0.0, 0, time.perf_counter()
        for b, xb in sets.x_train.batches(idx, self.per_rank_batch):
            if opts.augment:
                xb = data_mod.augment(xb, sets.train_src.hflip, gen)
            xb = data_mod.normalize(xb.to(session.device, non_blocking=True), preset["mean"], preset["std"])
            if opts.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yb = sets.y_train[b].to(session.device, non_blocking=True)
            with opts.autocast():
                loss = F.cross_entropy(self.model(xb).float(), yb, label_smoothing=stage.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if opts.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), opts.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            loss_sum += loss.item() * len(b)
            seen += len(b)
        train_seconds = time.perf_counter() - t0
        loss_sum, seen, train_seconds = session.all_sum([loss_sum, float(seen), train_seconds])
        val_loss, val_acc = _evaluate(session, self.model, sets.x_val, sets.y_val, preset,
                                      max(self.per_rank_batch, 256), opts.autocast, opts.channels_last)
        return {"epoch": float(epoch + 1), "train_loss": loss_sum / max(1.0, seen), "val_loss": val_loss,
                "val_accuracy": val_acc, "images_per_second": seen / max(1e-9, train_seconds / world),
                "resumed_from": float(start_epoch)}


def train_network(session, cfg: StageConfig, recipe: NetworkRecipe | None = None) -> None:
    """A network stage (Pretrain, FullFineTune: their stage types' `recipe`): epochs over decoded images, a
    checkpoint per epoch."""
    spec, stage = cfg.spec, cfg.stage
    recipe = recipe or NetworkRecipe.implied_by(stage)
    sets = _Sets.load(cfg, recipe)
    torch.manual_seed(spec.data.seed)
    net = models.build(spec.model.backbone, sets.num_classes, spec.data.image_size)
    if cfg.init_backbone:
        models.load_weights(net, cfg.init_backbone)
    if cfg.init_head:
        models.load_head(net, cfg.init_head)
    opts = _Options.of(stage, recipe, session.device.type == "cuda")
    world = session.world_size
    per_rank_batch = max(1, stage.batch_size // world)
    steps_per_epoch = math.ceil(math.ceil(len(sets.y_train) / world) / per_rank_batch)
    optimizer, warmup = _optimizer(net, stage, recipe, steps_per_epoch)
    scheduler = _schedule(optimizer, warmup, steps_per_epoch * stage.epochs)
    start_epoch, history = _resume(session, "model", net, optimizer, scheduler)
    if opts.channels_last:
        net = net.to(memory_format=torch.channels_last)
    run = _NetworkRun(session, cfg, sets, opts, session.prepare_model(net), optimizer, scheduler, per_rank_batch)
    stopper = EarlyStopping(stage.monitor, stage.patience, history)
    for epoch in range(start_epoch, stage.epochs):
        if stopper.stopped:  # a run resumed from the checkpoint of the epoch it stopped at
            break
        metrics = run.epoch(epoch, start_epoch)
        metrics.update(stopper.update(metrics, epoch + 1 < stage.epochs))
        history.append(metrics)
        state = None
        if session.rank == 0:
            state = _checkpoint("model", run.model, optimizer, scheduler, epoch + 1, history,
                                classes=sets.train_src.classes)
        session.report(metrics, state, epoch + 1, stage.epochs)


# ------------------------------------------------------------------------------------------ features


def feature_model(cfg: StageConfig) -> models.GraftNet:
    """The frozen backbone for FrozenFeatures, in eval mode with its weights loaded."""
    spec = cfg.spec
    net = models.build(spec.model.backbone, spec.model.num_classes, spec.data.image_size)
    if cfg.init_backbone:
        models.load_weights(net, cfg.init_backbone)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def extract_features(backbone, x: torch.Tensor, preset: dict, device: torch.device, bf16: bool = False):
    """Pooled features of a batch of [0, 1] images (float32 on the CPU); `backbone`: `GraftNet.features`."""
    with torch.inference_mode():
        xb = data_mod.normalize(x.to(device), preset["mean"], preset["std"])
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()
        with ctx:
            return backbone(xb).float().cpu()


class FeatureExtractor:
    """A Ray Data actor: decodes a batch of images and returns their pooled backbone features."""

    def __init__(self, cfg: StageConfig):
        self.preset = cfg.preprocessing
        self.resize = data_mod.resize_of(self.preset)
        self.device = torch.device("cuda" if torch.cuda.is_available() and cfg.spec.workers.gpus > 0 else "cpu")
        self.backbone = feature_model(cfg).to(self.device).features  # pooled features, no head
        self.size = cfg.spec.data.image_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "uri" in batch:
            x = torch.from_numpy(np.stack([data_mod.decode_image(str(u), self.size, self.resize)
                                           for u in batch["uri"]]))
            x = x.float().div_(255.0)
        else:
            x = torch.from_numpy(np.stack(list(batch["pixels"])).astype(np.float32))
            if x.shape[-1] != self.size:
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        feats = extract_features(self.backbone, x, self.preset, self.device, self.device.type == "cuda")
        return {"pos": batch["pos"], "feature": feats.numpy()}
