"""Where a stage's run executes: `RayExecutor` (each stage its own Ray run: TorchTrainer for the training
stages, a Ray Data actor pool for FrozenFeatures) or `LocalExecutor` (the same loops in this process, no Ray:
the statistical transfer test, benchmark baselines). The driver and the stage registry are the same for both.

Separate runs per stage because DDP does not see `requires_grad` changes after wrapping: freezing and
unfreezing inside one run is a trap. Run names come from the job UID and the stage, so a rerun of the same
job resumes (Ray Train restores from `(storage_path, name)`) and a new job never picks up another's state.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from graft import storage
from graft.api.models import WorkersSpec
from graft.ledger import Ledger
from graft_trainer import checkpoints, loops, models, stopping, timing
from graft_trainer import data as data_mod
from graft_trainer.config import StageConfig
from graft_trainer.session import LocalSession

_log = logging.getLogger(__name__)


def cpus_per_worker(workers: WorkersSpec) -> float:
    text = str(workers.cpus)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def save_features(out_uri: str, x: torch.Tensor, sets: dict[str, Any], seconds: float) -> dict[str, float]:
    """Store `<out_uri>/<name>.pt` for each of `sets` (`train`, `val`, and `test` when there is one): pooled
    features (`x`: the sets' images one set after the other, in that order) and labels. Returns FrozenFeatures'
    metrics."""
    start = 0
    for name, src in sets.items():
        # A clone: torch.save of a slice would write the whole tensor's storage.
        tensors = {"features": x[start : start + len(src)].clone(), "labels": torch.from_numpy(src.labels)}
        models.save_tensors(storage.join(out_uri, f"{name}.pt"), tensors)
        start += len(src)
    metrics = {f"{name}_images": float(len(src)) for name, src in sets.items()}
    return {**metrics, "feature_dim": float(x.shape[1]), "images_per_second": len(x) / max(1e-9, seconds)}


class LocalExecutor:
    """The stages in this process: one `LocalSession`, no DDP, checkpoints kept in memory."""

    def __init__(self, device: str = "cpu"):
        self.device = device

    def fit(self, loop: Callable, cfg: StageConfig, keep: int, latest: bool = False
            ) -> tuple[dict[str, Any] | None, str | None]:
        """The best checkpoint's state (by val_accuracy), or the `latest`, kept in memory: no URI."""
        session = LocalSession(self.device, cfg.root, cfg.stage.type, cfg.lease)
        loop(session, cfg)
        return (session.state if latest else session.best), None

    def in_process(self, loop: Callable, cfg: StageConfig) -> tuple[dict[str, Any] | None, str | None]:
        """The loop in this process; its latest checkpoint's state."""
        session = LocalSession(self.device, cfg.root, cfg.stage.type, cfg.lease)
        loop(session, cfg)
        return session.state, None

    def features(self, cfg: StageConfig, sets: dict[str, Any], out_uri: str) -> dict[str, float]:
        t0 = time.perf_counter()
        backbone, size, device = loops.feature_model(cfg).features, cfg.spec.data.image_size, torch.device(self.device)
        images = [src.images(size, resize=data_mod.resize_of(cfg.preprocessing)) for src in sets.values()]
        t1 = time.perf_counter()
        x = torch.cat([loops.extract_features(backbone, b, cfg.preprocessing, device) for b in images])
        t2 = time.perf_counter()
        metrics = save_features(out_uri, x, sets, t2 - t0)
        record_parts(cfg, {"data": t1 - t0, "compute": t2 - t1, "checkpoint": time.perf_counter() - t2})
        return metrics


def features_in_driver(cfg: StageConfig, sets: dict[str, Any]) -> bool:
    """Whether FrozenFeatures runs in the driver's process rather than on a Ray Data actor pool: when the images are in
    memory already (built-in sets: nothing to read or decode), fit the driver's budget as float32, no GPU is asked
    for and the stage names no `actors`. On the demo the pool's start-up took seconds for milliseconds of work
    (`graft status`'s timing); the pool is for sets that need reading and decoding, or a GPU."""
    size = cfg.spec.data.image_size
    in_memory = all(src.pixels is not None for src in sets.values())
    nbytes = sum(len(src) * 3 * size * size * 4 for src in sets.values())
    return (in_memory and not cfg.stage.actors and not cfg.spec.workers.gpus
            and nbytes <= data_mod.in_process_budget(cfg.spec))


def ensure_ray(workers: WorkersSpec, log_to_driver: bool = True) -> float:
    """Join the cluster in RAY_ADDRESS, or start a local Ray sized for the job's workers; the seconds it took (0 when
    Ray was up already)."""
    import ray

    if ray.is_initialized():
        return 0.0
    t0 = time.perf_counter()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray Train's controller collects reports every health-check interval (2 s by default) and a worker's
    # report waits for it: with per-epoch checkpoints that idles small jobs for seconds per epoch. Measured on 2
    # cores (ray.train.report with a small checkpoint, 2 workers): 196 ms per report at 0.2 s, 57 ms at 0.05 s;
    # the polling costs Ray's processes 5% of one core more at 0.05 s than at 0.2 s (13% against 8%) while a
    # worker computes. Set the variable to choose otherwise.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.05")
    runtime_env = {"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"],
                                **storage.worker_env()}}  # the job's storage endpoint, for workers and Ray Data tasks
    # ray.init puts its own SIGTERM handler (sys.exit) in place of ours as it starts: a SIGTERM during its start-up
    # is a stop like any other, and ours goes back once it is up.
    try:
        _init_ray(workers, log_to_driver, runtime_env)
    except SystemExit as exc:
        if exc.code == signal.SIGTERM:
            raise stopping.Stopped(signal.SIGTERM) from exc
        raise
    stopping.install()
    stopping.check()  # a SIGTERM while Ray started went to Ray's handler, whose exit can be lost
    return time.perf_counter() - t0


def _init_ray(workers: WorkersSpec, log_to_driver: bool, runtime_env: dict[str, Any]) -> None:
    import ray

    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=log_to_driver, runtime_env=runtime_env)
        return
    # Ray Train's preemption watcher (one more actor process per worker group, on a 2-core machine a second of CPU
    # in each stage's start-up) polls for nodes being drained: a local Ray on this machine is never drained.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    # Ray Data read tasks and the feature actors need CPUs beside the training workers; logical CPUs are
    # only a scheduling count, so ask for enough that nothing waits forever on a small machine.
    needed = int(workers.replicas * max(1.0, cpus_per_worker(workers))) + 2
    ray.init(
        num_cpus=max(os.cpu_count() or 1, needed),
        num_gpus=torch.cuda.device_count() if torch.cuda.is_available() else 0,
        include_dashboard=False,
        log_to_driver=log_to_driver,
        runtime_env=runtime_env,
        configure_logging=True,
        logging_level=logging.WARNING,
    )


def record_parts(cfg: StageConfig, parts: dict[str, float]) -> None:
    """Add `parts` (seconds, `graft_trainer/timing.py`) to the stage's `timing` in the ledger; nothing without a
    ledger."""
    ledger = Ledger.load(cfg.root) if cfg.root else None
    if ledger is not None:
        ledger.stage(cfg.stage.type).timing.update(timing.rounded(parts))
        ledger.save(cfg.root, cfg.lease)


def _notes(cfg: StageConfig) -> list[str]:
    """The stage's ledger notes (checkpoints a resume passed over, `session.note_fallback`); none when the ledger
    cannot be read now (the run's own outcome is what matters then)."""
    try:
        ledger = Ledger.load(cfg.root) if cfg.root else None
    except (ValueError, storage.StorageError):
        return []
    return list(ledger.stage(cfg.stage.type).notes) if ledger is not None else []


def read_back(result: Any, cfg: StageConfig, score: str, latest: bool) -> tuple[dict[str, Any] | None, str | None]:
    """The state and URI of a finished run's best checkpoint by `score` (or its `latest`), checked against its
    manifest; an incomplete one is passed over, in one line, for the next best (or the next newest)."""
    def rank(cm: tuple[Any, dict]) -> float:
        return cm[1].get("epoch", 0) if latest else cm[1].get(score, float("-inf"))

    ordered = [c for c, _ in sorted(result.best_checkpoints or [], key=rank, reverse=True)]
    if result.checkpoint is not None:
        ordered.insert(0 if latest else len(ordered), result.checkpoint)
    seen, passed = set(), []
    for checkpoint in ordered:
        if checkpoint.path in seen:
            continue
        seen.add(checkpoint.path)
        # Ray Train gives the path on its storage filesystem: an object store's without the scheme.
        uri = storage.from_ray_path(cfg.root, checkpoint.path)
        try:  # read through graft.storage, whose reads retry a flaky store (Ray's download does not)
            state = checkpoints.load_uri(uri)
        except checkpoints.Incomplete as exc:
            passed.append(f"{uri} ({exc})")
            continue
        if passed:
            _log.warning(f"{cfg.run_name}: passed over incomplete checkpoint(s) {'; '.join(passed)}: using {uri}")
        return state, uri
    if passed:
        raise RuntimeError(f"{cfg.run_name}: no complete checkpoint: {'; '.join(passed)}")
    return None, None


def _worker_loop(config: dict[str, Any]) -> None:
    from graft_trainer import logship
    from graft_trainer.session import RaySession

    cfg = config["stage"]
    # Wall clocks, the driver's and this worker's: the same machine's, or NTP-synchronised nodes'.
    session = RaySession(cfg, startup=max(0.0, time.time() - config["fit_start"]))
    with logship.capture(cfg.root, cfg.stage.type, f"worker-{session.rank}") as session.log:
        config["loop"](session, cfg)


class RayExecutor:
    """Each stage its own Ray run on the cluster in RAY_ADDRESS, or on a local Ray started for the job."""

    def __init__(self, max_failures: int = 3, log_to_driver: bool = True):
        self.max_failures = max_failures
        self.log_to_driver = log_to_driver

    def in_process(self, loop: Callable, cfg: StageConfig) -> tuple[dict[str, Any] | None, str | None]:
        """The loop in the driver's process, no worker group (no start-up, no DDP): its latest checkpoint's state
        and URI. Checkpoints go to storage, so a rerun after a killed driver resumes from the latest."""
        from graft_trainer.session import StoredSession

        session = StoredSession(cfg, "cuda" if torch.cuda.is_available() and cfg.spec.workers.gpus else "cpu")
        loop(session, cfg)
        return session.state, session.uri

    def fit(self, loop: Callable, cfg: StageConfig, keep: int, latest: bool = False
            ) -> tuple[dict[str, Any] | None, str | None]:
        """One TorchTrainer run of a training stage: the best checkpoint's state (by val_accuracy), or the
        `latest`, and its URI."""
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        workers = cfg.spec.workers
        ray_init = ensure_ray(workers, self.log_to_driver)
        # Pretrain and FullFineTune rank their epochs by `selection` (their monitor, see loops.EarlyStopping).
        score = "val_accuracy" if latest else "selection"
        storage_path, fs = storage.ray_storage(storage.join(cfg.root, "checkpoints"))
        resources: dict[str, float] = {"CPU": cpus_per_worker(workers)}
        if workers.gpus:
            resources["GPU"] = workers.gpus
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={"loop": loop, "stage": cfg, "fit_start": time.time()},
            scaling_config=ScalingConfig(
                num_workers=workers.replicas, use_gpu=workers.gpus > 0, resources_per_worker=resources
            ),
            run_config=RunConfig(
                name=cfg.run_name,
                storage_path=storage_path,
                storage_filesystem=fs,
                # Ray Train keeps the best `num_to_keep` by score and always the latest: at least two, so that an
                # incomplete latest checkpoint has a complete one to fall back to (graft_trainer/checkpoints.py).
                checkpoint_config=CheckpointConfig(
                    num_to_keep=max(keep, 2), checkpoint_score_attribute=score, checkpoint_score_order="max"
                ),
                failure_config=FailureConfig(max_failures=self.max_failures),
            ),
        )
        # Ray Train installs its own SIGINT handler in fit() (graceful abort, or sys.exit when the controller is
        # already gone) and leaves it installed: turn both into KeyboardInterrupt and put ours back, so Ctrl-C
        # leaves the stage Running (resumable) instead of "succeeded" with a partial run.
        main = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGINT) if main else None
        notes = _notes(cfg)
        started = time.time()
        try:
            result = trainer.fit()
        except SystemExit as exc:
            raise KeyboardInterrupt(f"{cfg.run_name}: training run aborted") from exc
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
            for line in _notes(cfg)[len(notes):]:  # what the workers passed over, said in the driver's log too
                _log.warning(line)
        self._record_fit(cfg, ray_init, time.time() - started)
        reached = (result.metrics or {}).get("epoch", 0)
        if reached < cfg.stage.epochs and not (result.metrics or {}).get("stopped_early"):
            raise KeyboardInterrupt(f"{cfg.run_name}: training run stopped at epoch {reached} of {cfg.stage.epochs}")
        return read_back(result, cfg, score, latest)

    @staticmethod
    def _record_fit(cfg: StageConfig, ray_init: float, seconds: float) -> None:
        """Ray's start and the fit's `teardown` (what the workers' parts leave of `seconds`) into the ledger."""
        ledger = Ledger.load(cfg.root) if cfg.root else None
        if ledger is None:
            return
        parts = ledger.stage(cfg.stage.type).timing
        worker = sum(parts.get(k, 0.0) for k in ("startup", "data", "compute", "checkpoint"))
        record_parts(cfg, {"ray_init": ray_init, "teardown": max(0.0, seconds - worker)})

    def features(self, cfg: StageConfig, sets: dict[str, Any], out_uri: str) -> dict[str, float]:
        """Run the frozen backbone once over the images of `sets` (train, validation, test) on a Ray Data actor pool
        and store `<out_uri>/<set>.pt` (features and labels); in the driver's process when `features_in_driver`."""
        if features_in_driver(cfg, sets):
            return LocalExecutor().features(cfg, sets, out_uri)
        import ray.data

        workers = cfg.spec.workers
        ray_init = ensure_ray(workers, self.log_to_driver)
        if not self.log_to_driver:  # Ray Data's plan, progress and "finished in" lines, unless --verbose
            logging.getLogger("ray.data").setLevel(logging.ERROR)
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = context.print_on_execution_start = False
        t0 = time.perf_counter()
        rows: list[dict[str, Any]] = []  # the sets' images in order; `pos` puts the features back in order
        for src in sets.values():
            for i in range(len(src)):
                image = {"uri": src.files[i]} if src.files is not None else {"pixels": src.pixels[i]}
                rows.append({"pos": len(rows), **image})
        parts = {"ray_init": ray_init, "data": time.perf_counter() - t0}
        x = self._feature_pass(cfg, rows, parts)
        seconds = parts["startup"] + parts["compute"]
        t1 = time.perf_counter()
        metrics = save_features(out_uri, x, sets, seconds)
        record_parts(cfg, {**parts, "checkpoint": time.perf_counter() - t1})
        return metrics

    @staticmethod
    def _feature_pass(cfg: StageConfig, rows: list[dict[str, Any]], parts: dict[str, float]) -> torch.Tensor:
        """The features of `rows`, in their order, from a Ray Data actor pool; `parts` gets the pool's `startup`
        (until the first batch comes back) and the pass's `compute`."""
        import ray.data

        workers, stage = cfg.spec.workers, cfg.stage
        actors = stage.actors or workers.replicas
        t0 = first = time.perf_counter()
        blocks = max(actors, min(len(rows) // max(1, stage.batch_size), 4 * actors))
        ds = ray.data.from_items(rows, override_num_blocks=blocks)
        out = ds.map_batches(
            loops.FeatureExtractor,
            fn_constructor_kwargs={"cfg": cfg},
            batch_size=stage.batch_size,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=min(1.0, cpus_per_worker(workers)) if not workers.gpus else 1,
            num_gpus=workers.gpus or None,
            batch_format="numpy",
        )
        pos, feats = [], []
        for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
            first = first if pos else time.perf_counter()
            pos.append(np.asarray(batch["pos"]))
            feats.extend(batch["feature"])
        parts.update(startup=first - t0, compute=time.perf_counter() - first)
        return torch.from_numpy(np.stack(feats)[np.argsort(np.concatenate(pos))].astype(np.float32))
