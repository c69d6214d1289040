"""The Head stage's sweep: every setting of `HeadStage.grid()` (learning rate x weight decay x label smoothing)
trained at once on the stored features, as one batched linear layer (`[settings, features, classes]`) with a
vectorised AdamW, so 32 heads cost about what one did (one matmul per step instead of 32 small ones).

Each setting keeps its own best epoch by the stage's `monitor` and stops on its own `patience`; the stage stops
when every setting has. The chosen head is the setting whose best epoch scores best on validation. The table of
all settings goes into the stage's result (and the ledger); the test set is never read here.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from graft import storage
from graft.api.models import HeadStage
from graft_trainer import models
from graft_trainer.config import StageConfig

_BETAS, _EPS = (0.9, 0.999), 1e-8


class HeadGrid(nn.Module):
    """`settings` linear heads `features -> classes` as one batched layer; each starts from the same init."""

    def __init__(self, settings: int, features: int, classes: int):
        super().__init__()
        one = nn.Linear(features, classes)  # nn.Linear's own initialisation, shared by every setting
        self.weight = nn.Parameter(one.weight.detach().t().unsqueeze(0).repeat(settings, 1, 1).contiguous())
        self.bias = nn.Parameter(one.bias.detach().unsqueeze(0).repeat(settings, 1).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits `[settings, N, classes]` of features `[N, features]`."""
        return torch.baddbmm(self.bias.unsqueeze(1), x.unsqueeze(0).expand(len(self.weight), -1, -1), self.weight)

    def head(self, g: int) -> dict[str, torch.Tensor]:
        """Setting `g` as an `nn.Linear` state_dict (what the Head stage outputs)."""
        return {"weight": self.weight[g].detach().t().contiguous().clone(), "bias": self.bias[g].detach().clone()}


def smoothed_losses(logits: torch.Tensor, y: torch.Tensor, smoothing: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy per setting `[settings]`, each with its own label smoothing (torch's definition)."""
    logp = F.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, y.view(1, -1, 1).expand(len(logits), -1, 1)).squeeze(-1).mean(1)
    uniform = -logp.mean(-1).mean(1)
    return (1 - smoothing) * nll + smoothing * uniform


class BatchedAdamW:
    """AdamW (torch's update, bias-corrected, decoupled decay) with a learning rate and weight decay per setting:
    the first dimension of every parameter is the setting. `scale` (the schedule) multiplies the learning rates;
    a setting with `active` false is left as it is (stopped early)."""

    def __init__(self, params: list[nn.Parameter], lr: torch.Tensor, weight_decay: torch.Tensor):
        self.params, self.lr, self.wd = params, lr, weight_decay
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.steps = 0

    def step(self, scale: float, active: torch.Tensor) -> None:
        self.steps += 1
        b1, b2 = _BETAS
        c1, c2 = 1 - b1**self.steps, 1 - b2**self.steps
        with torch.no_grad():
            for p, m, v in zip(self.params, self.m, self.v, strict=True):
                shape = (-1,) + (1,) * (p.dim() - 1)
                lr = (self.lr * scale * active).view(shape)
                m.lerp_(p.grad, 1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.mul_(1 - lr * self.wd.view(shape))
                p.sub_(lr * (m / c1) / ((v / c2).sqrt() + _EPS))

    def state_dict(self) -> dict[str, Any]:
        return {"m": [t.clone() for t in self.m], "v": [t.clone() for t in self.v], "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.m, self.v, self.steps = [t.clone() for t in state["m"]], [t.clone() for t in state["v"]], state["steps"]


def better(a: tuple[float, float], b: tuple[float, float], monitor: str) -> bool:
    """Whether (val_accuracy, val_loss) `a` beats `b` on `monitor`, the other metric breaking ties."""
    if monitor == "val_loss":
        return (-a[1], a[0]) > (-b[1], b[0])
    return (a[0], -a[1]) > (b[0], -b[1])


def _cosine(step: int, total: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / max(1, total))))


#: Multiply-adds of one step below which the sweep runs on one thread: for tiny matmuls torch's threads cost more
#: than they bring (measured: 100 epochs of 32 heads on 60 x 16 features took 1.5 s on 1 thread, 22 s on 2 on a
#: busy 2-core machine).
ONE_THREAD_WORK = 50_000_000


@contextmanager
def _threads_for(work: int):
    before = torch.get_num_threads()
    if work < ONE_THREAD_WORK:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_head(session, cfg: StageConfig) -> None:
    """Head: the sweep on `features/train.pt`, validated on `features/val.pt` (see `_train_head`)."""
    stage = cfg.stage
    assert isinstance(stage, HeadStage)
    train = models.read_tensors(storage.join(cfg.features, "train.pt"))
    val = models.read_tensors(storage.join(cfg.features, "val.pt"))
    n, dim = train["features"].shape
    work = max(min(stage.batch_size, n), len(val["labels"])) * dim * cfg.spec.model.num_classes * len(stage.grid())
    with _threads_for(work if session.device.type == "cpu" else ONE_THREAD_WORK):
        _train_head(session, cfg, train, val)


def _new_track(heads: HeadGrid, settings: int) -> dict[str, Any]:
    """Per setting: its best (val_accuracy, val_loss), the epoch of it, its weights then, epochs since, active."""
    return {
        "best_acc": torch.full((settings,), -1.0), "best_loss": torch.full((settings,), math.inf),
        "best_epoch": torch.zeros(settings, dtype=torch.long), "since": torch.zeros(settings, dtype=torch.long),
        "active": torch.ones(settings, dtype=torch.bool), "stopped_at": torch.zeros(settings, dtype=torch.long),
        "weight": heads.weight.detach().clone(), "bias": heads.bias.detach().clone(),
    }


def _epoch_index(n: int, seed: int, epoch: int, rank: int, world: int) -> torch.Tensor:
    """This rank's rows for one epoch: a shared permutation padded so every rank takes as many steps."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    per_rank = math.ceil(len(perm) / world)
    return torch.cat([perm, perm[: per_rank * world - len(perm)]])[rank::world]


def _val_scores(heads: HeadGrid, x_val: torch.Tensor, y_val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(val_accuracy, val_loss) of every setting, on the CPU."""
    with torch.no_grad():
        logits = heads(x_val)
        loss = F.cross_entropy(logits.transpose(1, 2), y_val.expand(len(heads.weight), -1), reduction="none").mean(1)
        acc = (logits.argmax(-1) == y_val).float().mean(1)
    return acc.cpu(), loss.cpu()


def _train_head(session, cfg: StageConfig, train: dict, val: dict) -> None:
    """Head: the sweep on `features/train.pt`, validated on `features/val.pt`; checkpoints hold every setting
    (weights, optimizer moments, best epochs), so a resumed run goes on where the last checkpoint left it.

    Only the batched linear layer is built here: the backbone is never constructed, loaded or run."""
    spec, stage, device, world = cfg.spec, cfg.stage, session.device, session.world_size
    x_train, y_train = train["features"].to(device), train["labels"].to(device)
    x_val, y_val = val["features"].to(device), val["labels"].to(device)
    grid = stage.grid()
    settings = len(grid)
    lr, wd, smoothing = (torch.tensor([s[k] for s in grid], device=device)
                         for k in ("lr", "weight_decay", "label_smoothing"))
    torch.manual_seed(spec.data.seed)
    heads = HeadGrid(settings, x_train.shape[1], spec.model.num_classes).to(device)
    optimizer = BatchedAdamW([heads.weight, heads.bias], lr, wd)
    per_rank_batch = max(1, stage.batch_size // world)
    total_steps = math.ceil(math.ceil(len(y_train) / world) / per_rank_batch) * stage.epochs
    track, start_epoch, history = _new_track(heads, settings), 0, []
    state = session.load_state()
    if state is not None:
        heads.load_state_dict(state["grid"])
        optimizer.load_state_dict(state["optimizer"])
        track, start_epoch, history = state["track"], state["epoch"], state["history"]
    model = session.prepare_model(heads)
    every = max(1, stage.epochs // 10)
    for epoch in range(start_epoch, stage.epochs):
        if not track["active"].any():
            break
        model.train()
        idx = _epoch_index(len(y_train), spec.data.seed, epoch, session.rank, world)
        loss_sum = torch.zeros(settings, device=device)
        for start in range(0, len(idx), per_rank_batch):
            b = idx[start : start + per_rank_batch].to(device)
            losses = smoothed_losses(model(x_train[b]), y_train[b], smoothing)
            heads.weight.grad = heads.bias.grad = None
            losses.sum().backward()  # settings are independent: the sum's gradient is each one's own
            optimizer.step(_cosine(optimizer.steps, total_steps), track["active"].to(device).float())
            loss_sum += losses.detach() * len(b)
        _update(track, heads, *_val_scores(heads, x_val, y_val), epoch + 1, stage)
        chosen = choose(track, stage.monitor)
        (train_loss,) = session.all_sum([loss_sum[chosen].item() / len(idx) / world])
        metrics = {"epoch": float(epoch + 1), "train_loss": train_loss, "val_loss": float(track["best_loss"][chosen]),
                   "val_accuracy": float(track["best_acc"][chosen]), "settings": float(settings),
                   "settings_active": float(track["active"].sum()), "resumed_from": float(start_epoch)}
        done = epoch + 1 == stage.epochs or not track["active"].any()
        if done and epoch + 1 < stage.epochs:
            metrics["stopped_early"] = 1.0  # the executor then knows a short run is not an interrupted one
        history.append(metrics)
        out = None
        if (done or (epoch + 1) % every == 0) and session.rank == 0:
            out = {"grid": {k: v.detach().cpu().clone() for k, v in heads.state_dict().items()},
                   "optimizer": optimizer.state_dict(), "track": {k: v.clone() for k, v in track.items()},
                   "epoch": epoch + 1, "history": list(history), "head": _chosen_head(track, chosen),
                   "table": table(grid, track), "chosen": chosen, "stop": stop_reason(track, stage, epoch + 1)}
        session.report(metrics, out, epoch + 1, stage.epochs)


def _update(track: dict[str, Any], heads: HeadGrid, acc: torch.Tensor, loss: torch.Tensor, epoch: int,
            stage: HeadStage) -> None:
    """Record this epoch's validation scores: keep each improved setting's weights; stop the patient-out ones."""
    active = track["active"]
    improved = torch.tensor([
        bool(active[g]) and better((float(acc[g]), float(loss[g])),
                                   (float(track["best_acc"][g]), float(track["best_loss"][g])), stage.monitor)
        for g in range(len(acc))
    ])
    track["best_acc"] = torch.where(improved, acc, track["best_acc"])
    track["best_loss"] = torch.where(improved, loss, track["best_loss"])
    track["best_epoch"] = torch.where(improved, torch.full_like(track["best_epoch"], epoch), track["best_epoch"])
    track["since"] = torch.where(improved, torch.zeros_like(track["since"]), track["since"] + active.long())
    mask = improved.to(heads.weight.device)
    track["weight"] = torch.where(mask.view(-1, 1, 1), heads.weight.detach(), track["weight"].to(mask.device)).cpu()
    track["bias"] = torch.where(mask.view(-1, 1), heads.bias.detach(), track["bias"].to(mask.device)).cpu()
    if stage.patience is not None:
        out = active & (track["since"] >= stage.patience)
        track["stopped_at"] = torch.where(out, torch.full_like(track["stopped_at"], epoch), track["stopped_at"])
        track["active"] = active & ~out


def choose(track: dict[str, Any], monitor: str) -> int:
    """The setting whose best epoch scores best on validation (the first of equals: the grid's order)."""
    best = 0
    for g in range(1, len(track["best_acc"])):
        a = (float(track["best_acc"][g]), float(track["best_loss"][g]))
        if better(a, (float(track["best_acc"][best]), float(track["best_loss"][best])), monitor):
            best = g
    return best


def _chosen_head(track: dict[str, Any], g: int) -> dict[str, torch.Tensor]:
    return {"weight": track["weight"][g].t().contiguous().clone(), "bias": track["bias"][g].clone()}


def table(grid: list[dict[str, float]], track: dict[str, Any]) -> list[dict[str, float]]:
    """One row per setting: its settings, best validation scores, best epoch and the epoch it stopped (0: never)."""
    return [{**s, "val_accuracy": float(track["best_acc"][g]), "val_loss": float(track["best_loss"][g]),
             "best_epoch": float(track["best_epoch"][g]), "stopped_at": float(track["stopped_at"][g])}
            for g, s in enumerate(grid)]


def stop_reason(track: dict[str, Any], stage: HeadStage, epoch: int) -> str:
    """Why the stage ended where it did, in words (the ledger keeps it)."""
    if not track["active"].any() and epoch < stage.epochs:
        return (f"early stop at epoch {epoch} of {stage.epochs}: no setting improved {stage.monitor} for "
                f"{stage.patience} epochs")
    return f"ran all {stage.epochs} epochs"
