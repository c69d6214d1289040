"""Each stage as its own Ray run: TorchTrainer for Pretrain / Head / FullFineTune, Ray Data for FrozenFeatures.

Separate runs per stage because DDP does not see `requires_grad` changes after wrapping: freezing and
unfreezing inside one run is a trap. Run names come from the job UID and the stage, so a rerun of the same
job resumes (Ray Train restores from `(storage_path, name)`) and a new job never picks up another's state.
"""

from __future__ import annotations

import io
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from graft import storage
from graft.api.models import FrozenFeaturesStage, TransferJobSpec, WorkersSpec


def run_name(uid: str, stage: str) -> str:
    """Ray Train run name of a stage: unique per job (UID) and stage."""
    return f"{uid}-{stage.lower()}"


def cpus_per_worker(workers: WorkersSpec) -> float:
    text = str(workers.cpus)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _worker_loop(cfg: dict[str, Any]) -> None:
    from graft.trainer.loops import train_head, train_network
    from graft.trainer.session import RaySession

    session = RaySession(cfg.get("root"), cfg["stage"], cfg["checkpoint_root"])
    if cfg["stage"] == "Head":
        train_head(session, cfg)
    else:
        train_network(session, cfg)


@dataclass
class FitOutcome:
    best_checkpoint: str | None
    state: dict[str, Any] | None


def _uri(path: str, root: str) -> str:
    return f"s3://{path}" if storage.is_s3(root) and not path.startswith("s3://") else path


def fit_stage(cfg: dict[str, Any], workers: WorkersSpec, root: str, keep: int, max_failures: int) -> FitOutcome:
    """One TorchTrainer run of a training stage; returns the best checkpoint (by val_accuracy) and its state."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage_path, fs = storage.ray_storage(storage.join(root, "checkpoints"))
    resources: dict[str, float] = {"CPU": cpus_per_worker(workers)}
    if workers.gpus:
        resources["GPU"] = workers.gpus
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config=cfg,
        scaling_config=ScalingConfig(
            num_workers=workers.replicas, use_gpu=workers.gpus > 0, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=cfg["run_name"],
            storage_path=storage_path,
            storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(
                num_to_keep=keep, checkpoint_score_attribute="val_accuracy", checkpoint_score_order="max"
            ),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    # Ray Train installs its own SIGINT handler in fit() (graceful abort, or sys.exit when the controller is
    # already gone) and leaves it installed: turn both into KeyboardInterrupt and put ours back, so Ctrl-C
    # leaves the stage Running (resumable) instead of "succeeded" with a partial run.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        result = trainer.fit()
    except SystemExit as exc:
        raise KeyboardInterrupt(f"{cfg['run_name']}: training run aborted") from exc
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    planned = TransferJobSpec.model_validate(cfg["spec"]).stages[cfg["index"]].epochs
    reached = (result.metrics or {}).get("epoch", 0)
    if reached < planned:
        raise KeyboardInterrupt(f"{cfg['run_name']}: training run stopped at epoch {reached} of {planned}")
    best = None
    if result.best_checkpoints:
        best = max(result.best_checkpoints, key=lambda cm: cm[1].get("val_accuracy", float("-inf")))[0]
    chosen = best or result.checkpoint
    state = None
    if chosen is not None:
        with chosen.as_directory() as d:
            state = torch.load(f"{d}/state.pt", map_location="cpu", weights_only=False)
    return FitOutcome(
        best_checkpoint=_uri(chosen.path, root) if chosen is not None else None, state=state
    )


def frozen_features(
    cfg: dict[str, Any], stage: FrozenFeaturesStage, workers: WorkersSpec, train_src, val_src, out_uri: str
) -> dict[str, float]:
    """Run the frozen backbone once over train and validation images on a Ray Data actor pool and store
    `<out_uri>/train.pt` and `<out_uri>/val.pt` (features and labels)."""
    import ray.data
    from graft.trainer.loops import FeatureExtractor

    rows = []
    for split_id, src in ((0, train_src), (1, val_src)):
        for i in range(len(src)):
            row: dict[str, Any] = {"idx": i, "split": split_id, "label": int(src.labels[i])}
            if src.files is not None:
                row["uri"] = src.files[i]
            else:
                row["pixels"] = src.pixels[i]
            rows.append(row)
    actors = stage.actors or workers.replicas
    t0 = time.perf_counter()
    blocks = max(actors, min(len(rows) // max(1, stage.batch_size), 4 * actors))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    out = ds.map_batches(
        FeatureExtractor,
        fn_constructor_kwargs={"cfg": {**cfg, "gpu": workers.gpus > 0}},
        batch_size=stage.batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=min(1.0, cpus_per_worker(workers)) if not workers.gpus else 1,
        num_gpus=workers.gpus or None,
        batch_format="numpy",
    )
    parts: dict[str, list[np.ndarray]] = {"idx": [], "split": [], "label": [], "feature": []}
    for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
        for key in parts:
            parts[key].append(np.asarray(batch[key]))
    seconds = time.perf_counter() - t0
    cols = {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in parts.items()}
    dim = 0
    for split_id, name in ((0, "train"), (1, "val")):
        sel = cols["split"] == split_id
        order = np.argsort(cols["idx"][sel], kind="stable")
        feats = torch.from_numpy(np.stack(list(cols["feature"][sel][order])).astype(np.float32))
        labels = torch.from_numpy(cols["label"][sel][order].astype(np.int64))
        dim = feats.shape[1]
        buf = io.BytesIO()
        torch.save({"features": feats, "labels": labels}, buf)
        storage.write_bytes(storage.join(out_uri, f"{name}.pt"), buf.getvalue())
    return {
        "train_images": float(len(train_src)),
        "val_images": float(len(val_src)),
        "feature_dim": float(dim),
        "images_per_second": len(rows) / max(1e-9, seconds),
    }
