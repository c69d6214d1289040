"""Where a training loop runs: one Ray Train worker (`RaySession`) or the current process (`LocalSession`).

The stage loops talk only to this interface (rank, device, DDP wrapping, reporting, resuming), so the same
code runs under Ray Train and in-process (statistical tests, benchmarks' baselines).
"""

from __future__ import annotations

import copy
import io
import logging
import os
import tempfile
import time
from typing import Any

import torch

from graft import storage
from graft.lease import Holder
from graft.ledger import Ledger
from graft_trainer import checkpoints, timing
from graft_trainer.config import StageConfig
from graft_trainer.logship import LogShipper, metrics_text

_log = logging.getLogger(__name__)


class LocalSession:
    """A single process: no DDP, checkpoints kept in memory (the latest, and the best by val_accuracy)."""

    rank = 0
    world_size = 1

    def __init__(self, device: str = "cpu", ledger_root: str | None = None, stage: str | None = None,
                 lease: Holder | None = None):
        self.device = torch.device(device)
        self.lease = lease  # the driver's lease, checked before every ledger write
        self.state: dict[str, Any] | None = None
        self.best: dict[str, Any] | None = None
        self.reports: list[dict[str, float]] = []
        self.ledger_root = ledger_root
        self.stage = stage
        self._pending: list[dict[str, float]] = []  # epochs not yet in the ledger
        self._written = 0.0  # when the ledger was last written (monotonic)
        self.clock = timing.Clock()  # where the loop's time goes (ledger `timing`)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        self.clock.switch("compute")  # the loops call this last before their epochs
        return model

    def load_state(self) -> dict[str, Any] | None:
        return self.state

    def all_sum(self, values: list[float]) -> list[float]:
        return values

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None, epoch: int, epochs: int) -> None:
        """Keep a copy of `state` (the loops hand over live tensors that later steps change) as the latest
        checkpoint, and as the best while it ranks above the earlier ones (`_selection`); record the epoch in the
        ledger."""
        self.clock.switch("checkpoint")
        self.reports.append(dict(metrics))
        if state is not None:
            self.state = copy.deepcopy(state)
            if self.best is None or _selection(metrics) > _selection(self.best["history"][-1]):
                self.best = self.state
        self._record(metrics, epoch, epochs, state is not None, None)

    def _record(self, metrics: dict[str, float], epoch: int, epochs: int, checkpointed: bool,
                checkpoint: str | None) -> None:
        """Record the epoch in the ledger at checkpoints, at the last epoch, and otherwise at most every
        LEDGER_EVERY_S: in-process epochs can take milliseconds (a Head sweep's), and rewriting the whole ledger
        after each took twice as long as the sweep itself on the demo."""
        if not (self.ledger_root and self.stage):
            self.clock.switch("compute")
            return
        self._pending.append(dict(metrics))
        now = time.monotonic()
        if checkpointed or epoch == epochs or metrics.get("stopped_early") or now - self._written >= LEDGER_EVERY_S:
            record_epochs(self.ledger_root, self.stage, self._pending, epochs, checkpoint, self.lease,
                          self.clock.snapshot())
            self._pending, self._written = [], now
        self.clock.switch("compute")


#: The longest an in-process stage leaves finished epochs out of the ledger (its progress display reads them).
LEDGER_EVERY_S = 1.0


def _selection(metrics: dict[str, float]) -> float:
    """How a checkpoint ranks: `selection` where the loop reports it (best by its `monitor`), else val_accuracy."""
    return metrics.get("selection", metrics["val_accuracy"])


class StoredSession(LocalSession):
    """The current process, its checkpoints written to storage (`<root>/checkpoints/<run name>/epoch_NNNNN/`:
    `state.pt`, then `manifest.json`) so that a driver killed mid-stage resumes from the latest one when it is run
    again: a stage that runs in the driver (a Head sweep whose features fit in memory) without a Ray worker group.
    The last `KEEP` checkpoints are kept, so an incomplete latest one has a complete one before it to fall back to."""

    KEEP = 2

    def __init__(self, cfg: StageConfig, device: str = "cpu"):
        super().__init__(device, cfg.root, cfg.stage.type, cfg.lease)
        self.run_uri = storage.join(cfg.root, "checkpoints", cfg.run_name)
        self.uri: str | None = None  # the latest checkpoint written or resumed from

    def load_state(self) -> dict[str, Any] | None:
        if self.state is None:
            self.clock.switch("checkpoint")
            found = self._newest()
            if found is not None:
                self.uri, self.state = found
            self.clock.switch("data")
        return self.state

    def _newest(self) -> tuple[str, dict[str, Any]] | None:
        """The newest complete checkpoint (a folder from a Graft before 2026-12, `latest/`, last), saying so when
        the newest one is incomplete."""
        names = checkpoints.folders(self.run_uri)
        legacy = storage.join(self.run_uri, "latest")
        candidates = [storage.join(self.run_uri, n) for n in names] + [legacy]
        passed: tuple[str, str] | None = None
        for uri in candidates:
            try:
                state = checkpoints.load_uri(uri)
            except checkpoints.Incomplete as exc:
                if uri != legacy or names:
                    passed = passed or (uri, str(exc))
                continue
            if passed:
                note_fallback(self.ledger_root, self.stage, checkpoints.fallback_line(*passed, uri))
            return uri, state
        if passed:
            note_fallback(self.ledger_root, self.stage, checkpoints.fallback_line(*passed, None))
        return None

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None, epoch: int, epochs: int) -> None:
        self.clock.switch("checkpoint")
        self.reports.append(dict(metrics))
        if state is not None:
            buf = io.BytesIO()
            torch.save(state, buf)
            self.uri = storage.join(self.run_uri, f"epoch_{epoch:05d}")
            data = buf.getvalue()
            storage.write_bytes(storage.join(self.uri, checkpoints.STATE), data)
            checkpoints.write_manifest(self.uri, checkpoints.manifest_of_bytes({checkpoints.STATE: data}))
            self._prune(checkpoints.folder_name(self.uri))
            self.state = copy.deepcopy(state)
        self._record(metrics, epoch, epochs, state is not None, self.uri if state is not None else None)

    def _prune(self, written: str) -> None:
        """Delete the checkpoints older than the newest KEEP (never the one just written); a delete that fails
        leaves an old checkpoint behind, nothing worse."""
        order, names = checkpoints.folder_order(written), checkpoints.folders(self.run_uri)
        older = [n for n in names if checkpoints.folder_order(n) < order]
        # Folders above the one just written are ones a resume passed over as incomplete: no use any more.
        newer = [n for n in names if checkpoints.folder_order(n) > order]
        for name in older[self.KEEP - 1:] + newer:
            fs, path = storage.filesystem(storage.join(self.run_uri, name))
            try:
                fs.delete_dir(path)
            except OSError as exc:
                _log.warning("could not delete the old checkpoint %s: %s", storage.join(self.run_uri, name), exc)


class RaySession:
    """One Ray Train worker: DDP through `prepare_model`, checkpoints persisted by Ray Train."""

    def __init__(self, cfg: StageConfig, startup: float = 0.0):
        import ray.train
        import ray.train.torch

        self.clock = timing.Clock()  # `startup`: from the driver's fit() to here (executors._worker_loop)
        self.clock.parts["startup"] = startup

        if cfg.spec.storage is not None:  # this worker's own storage writes (ledger, logs) retry like the driver's
            storage.configure(cfg.spec.storage.retry_seconds)
        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.ledger_root, self.stage, self.lease = cfg.root, cfg.stage.type, cfg.lease
        self.checkpoint_root = storage.join(cfg.root, "checkpoints", cfg.run_name)
        self._taken: set[str] = set()  # checkpoint folder names not to reuse (after a fallback)
        self.log: LogShipper | None = None  # this worker's log in storage (executors._worker_loop)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        model = ray.train.torch.prepare_model(model)
        self.clock.switch("compute")  # the loops call this last before their epochs
        return model

    def load_state(self) -> dict[str, Any] | None:
        """The run's latest checkpoint (Ray Train's), checked against its manifest; when it is incomplete, the
        newest complete one in the run's checkpoint folder, said in one line (this worker's log; rank 0 also
        records it in the ledger for the driver's log). Every rank decides alike: they list the same folder."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        self.clock.switch("checkpoint")
        try:
            return self._resume_state(checkpoint)
        finally:
            self.clock.switch("data")

    def _resume_state(self, checkpoint: Any) -> dict[str, Any] | None:
        latest = storage.join(self.checkpoint_root, checkpoints.folder_name(checkpoint.path))
        try:  # read through graft.storage, whose reads retry a flaky store (Ray's download does not)
            state = checkpoints.load_uri(latest)
        except checkpoints.Incomplete as exc:
            problem = str(exc)
        else:
            if self._fell_back_before():  # a worker group restarted after a fallback: its redone epochs go on
                self._taken = set(checkpoints.folders(self.checkpoint_root))
            return state
        # Redone epochs get folders of their own (`report`): Ray Train still tracks the incomplete checkpoint (and
        # the ones after it) by their folder names, and deletes them by those names later.
        self._taken = set(checkpoints.folders(self.checkpoint_root))
        found = checkpoints.newest_complete(self.checkpoint_root, checkpoints.load_uri,
                                            {checkpoints.folder_name(latest)})
        line = checkpoints.fallback_line(latest, problem, found[0] if found else None)
        note_fallback(self.ledger_root if self.rank == 0 else None, self.stage, line)
        return found[1] if found else None

    def _fell_back_before(self) -> bool:
        """Whether a resume of this run passed over an incomplete checkpoint (the stage's ledger notes say so)."""
        ledger = Ledger.load(self.ledger_root) if self.ledger_root else None
        notes = ledger.stage(self.stage).notes if ledger is not None else []
        return any(f" {self.checkpoint_root}/" in note for note in notes)

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None, epoch: int, epochs: int) -> None:
        """End of an epoch: rank 0 records it in the ledger; an epoch with `state` (given on rank 0 only, on
        the same epochs on every rank) becomes a Ray Train checkpoint. Every rank must call this."""
        import ray.train
        from ray.train import Checkpoint

        self.clock.switch("checkpoint")
        checkpointing = state is not None if self.world_size == 1 else self._agree(state is not None)
        name = checkpoints.free_name(f"epoch_{epoch:05d}", self._taken)
        checkpoint_uri = None
        if checkpointing:
            # ray.train.report is a barrier with the controller (it polls results every
            # RAY_TRAIN_HEALTH_CHECK_INTERVAL_S), so it is called only when there is a checkpoint to keep.
            if state is not None and self.rank == 0:
                with tempfile.TemporaryDirectory(prefix="graft-ckpt-") as tmp:
                    torch.save(state, os.path.join(tmp, checkpoints.STATE))
                    manifest = checkpoints.manifest_of_dir(tmp)
                    ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp), checkpoint_dir_name=name)
                checkpoint_uri = storage.join(self.checkpoint_root, name)
                # Last, once Ray Train has uploaded the folder: a folder with a manifest is whole.
                checkpoints.write_manifest(checkpoint_uri, manifest)
            else:
                ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
        if self.rank == 0 and self.ledger_root:
            record_epoch(self.ledger_root, self.stage, metrics, epoch, epochs, checkpoint_uri, self.lease,
                         self.clock.snapshot())
        _log.info("epoch %d/%d (worker %d of %d): %s", epoch, epochs, self.rank, self.world_size,
                  metrics_text({k: v for k, v in metrics.items() if k != "epoch"}))
        if self.log is not None:
            self.log.flush()
        self.clock.switch("compute")

    def _agree(self, flag: bool) -> bool:
        """Rank 0 decides whether this epoch is checkpointed; the others follow (equal report counts)."""
        return bool(self.all_sum([1.0 if (flag and self.rank == 0) else 0.0])[0])


def note_fallback(root: str | None, stage: str | None, line: str) -> None:
    """Say that a resume passed over an incomplete checkpoint: in this process's log and, given a job root, in the
    stage's ledger record (`notes`), where the driver's log (`RayExecutor.fit`) and `graft status` find it."""
    _log.warning(line)
    if not (root and stage):
        return
    ledger = Ledger.load(root)
    if ledger is not None:
        ledger.stage(stage).notes.append(line)
        ledger.save(root)


def record_epoch(
    root: str, stage: str, metrics: dict[str, float], epoch: int, epochs: int, checkpoint: str | None,
    lease: Holder | None = None, parts: dict[str, float] | None = None,
) -> None:
    """Write one finished epoch into the ledger (rank 0 only; the driver is blocked in `fit` meanwhile)."""
    record_epochs(root, stage, [{**metrics, "epoch": float(epoch)}], epochs, checkpoint, lease, parts)


def record_epochs(root: str, stage: str, finished: list[dict[str, float]], epochs: int, checkpoint: str | None,
                  lease: Holder | None = None, parts: dict[str, float] | None = None) -> None:
    """Write finished epochs (each metrics with its `epoch`, in order) into the ledger in one write; `lease`: the
    driver's, checked first (LeaseLost when another driver took the job over); `parts`: the loop's time so far
    (`graft_trainer/timing.py`), recorded in the stage's `timing`."""
    ledger = Ledger.load(root)
    if ledger is None or not finished:
        return
    rec = ledger.stage(stage)
    last = finished[-1]
    rec.epoch = int(last["epoch"])
    rec.epochs = epochs
    rec.metrics = {k: float(v) for k, v in last.items() if k != "epoch"}
    # A resumed attempt replays history from its checkpoint: drop entries at or after its first epoch first.
    first = finished[0]["epoch"]
    rec.history = [h for h in rec.history if h.get("epoch", 0) < first] + [
        {k: float(v) for k, v in m.items()} for m in finished]
    if checkpoint:
        rec.checkpoint = checkpoint
    if parts:
        rec.timing.update(parts)
    ledger.save(root, lease)
