"""The driver: runs a TransferJob's stages in order on Ray, keeping the ledger, then exports the model.

A rerun of the same job skips finished stages (ledger) and resumes the running one from its latest
checkpoint (Ray Train restores a run from `(storage_path, run name)`; names come from the job UID).
Bad input is found before a stage's Ray run starts where it can be (listing, decoding, weights) and is
recorded as that stage's failure reason; nothing already written is touched.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from graft.trainer import data as data_mod
from graft.trainer import export, models, stages
from graft.trainer.errors import InputError, user_message

from graft import storage
from graft.api.models import (
    FrozenFeaturesStage,
    FullFineTuneStage,
    HeadStage,
    PretrainStage,
    StageState,
    TransferJob,
    TransferJobSpec,
)
from graft.ledger import Ledger, job_root, now

log = logging.getLogger("graft.trainer")


class StageFailed(RuntimeError):
    """A stage failed; the message (also in the ledger) names the URI and cause where there is one."""

    def __init__(self, stage: str, message: str):
        self.stage = stage
        super().__init__(f"stage {stage} failed: {message}")


def job_uid(job: TransferJob) -> str:
    """The job's identity in storage: its Kubernetes UID, or its name for a local run without one."""
    uid = job.metadata.uid or job.metadata.name
    if not uid:
        raise InputError("metadata", "the job needs metadata.uid or metadata.name")
    return uid


def resolve_root(job: TransferJob, storage_uri: str | None) -> str:
    """The job root: `<spec.storage.uri or --storage>/<uid>`."""
    base = job.spec.storage.uri if job.spec.storage else storage_uri
    if not base:
        raise InputError("spec.storage.uri", "no storage given (set spec.storage.uri or pass --storage)")
    if not storage.is_s3(base) and not base.startswith("file://"):
        # Ray workers run in their own working directory: a relative folder must be made absolute here.
        base = str(Path(base).expanduser().resolve())
    return job_root(base, job_uid(job))


def _absolute(uri: str | None) -> str | None:
    if not uri or uri.startswith(("s3://", "file://", "builtin:", "torchvision:")):
        return uri
    return str(Path(uri).expanduser().resolve())


def _absolute_paths(spec):
    """The spec with local paths made absolute: Ray workers resolve paths from another working directory."""
    paths = {"train": _absolute(spec.data.train), "validation": _absolute(spec.data.validation)}
    data = spec.data.model_copy(update=paths)
    model = spec.model.model_copy(update={"weights": _absolute(spec.model.weights)})
    stages_ = [
        s.model_copy(update={"data": _absolute(s.data)}) if isinstance(s, PretrainStage) else s for s in spec.stages
    ]
    return spec.model_copy(update={"data": data, "model": model, "stages": stages_})


def apply_storage_env(job: TransferJob) -> None:
    """Point S3 clients (ours, pyarrow's, Ray's) at the job's endpoint; keys come only from the environment."""
    st = job.spec.storage
    if st and st.endpoint:
        os.environ["AWS_ENDPOINT_URL"] = st.endpoint
    if st and st.region:
        os.environ.setdefault("AWS_REGION", st.region)


def ensure_ray(job: TransferJob, log_to_driver: bool = True) -> None:
    """Join the cluster in RAY_ADDRESS, or start a local Ray sized for the job's workers."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray Train's controller collects reports every health-check interval (2 s by default) and a worker's
    # report waits for it: with per-epoch checkpoints that idles small jobs for seconds per epoch.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    runtime_env = {"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]}}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=log_to_driver, runtime_env=runtime_env)
        return
    w = job.spec.workers
    # Ray Data read tasks and the feature actors need CPUs beside the training workers; logical CPUs are
    # only a scheduling count, so ask for enough that nothing waits forever on a small machine.
    needed = int(w.replicas * max(1.0, stages.cpus_per_worker(w))) + 2
    ray.init(
        num_cpus=max(os.cpu_count() or 1, needed),
        num_gpus=torch.cuda.device_count() if torch.cuda.is_available() else 0,
        include_dashboard=False,
        log_to_driver=log_to_driver,
        runtime_env=runtime_env,
        configure_logging=True,
        logging_level=logging.WARNING,
    )


def _save_tensors(uri: str, tensors: dict[str, torch.Tensor]) -> None:
    buf = io.BytesIO()
    torch.save(tensors, buf)
    storage.write_bytes(uri, buf.getvalue())


def verify_up_front(source: data_mod.Source, spec: TransferJobSpec) -> None:
    """Decode every image before the Ray run, so a corrupt one fails the stage at once, by name. Not for a set
    the workers stream (too large to keep): reading it all here would take as long as an epoch, so a corrupt
    image there fails the stage when a worker reaches it, by name as well."""
    if not data_mod.streams(source, spec.data.image_size, data_mod.keep_budget(spec.workers.memory)):
        data_mod.verify_images(source)


class Driver:
    """Runs one job's stages; `run()` returns the final ledger or raises StageFailed."""

    def __init__(
        self,
        job: TransferJob,
        storage_uri: str | None = None,
        *,
        max_failures: int = 3,
        on_update: Callable[[Ledger], None] | None = None,
        log_to_driver: bool = True,
    ):
        self.job = job
        self.spec = _absolute_paths(job.spec)
        self.uid = job_uid(job)
        self.root = resolve_root(job, storage_uri)
        self.max_failures = max_failures
        self.on_update = on_update or (lambda _l: None)
        self.log_to_driver = log_to_driver
        self.preprocessing = models.torchvision_preset(self.spec.model.backbone, self.spec.model.weights)
        self._target: tuple[data_mod.Source, data_mod.Source] | None = None
        self._weights_checked = False

    # -- ledger --------------------------------------------------------------------------------

    def _save(self, ledger: Ledger) -> None:
        ledger.save(self.root)
        self.on_update(ledger)

    def _load(self) -> Ledger:
        ledger = Ledger.load(self.root)
        assert ledger is not None
        return ledger

    # -- inputs --------------------------------------------------------------------------------

    def target_data(self) -> tuple[data_mod.Source, data_mod.Source]:
        """Train and validation sources of the target set, listed, decoded once and class-counted."""
        if self._target is None:
            d = self.spec.data
            train, val = data_mod.train_val(d.train, d.validation, d.validation_split, d.seed, d.shots_per_class)
            if len(train.classes) != self.spec.model.num_classes:
                raise InputError(
                    d.train,
                    f"has {len(train.classes)} classes ({', '.join(train.classes[:10])}"
                    f"{' ...' if len(train.classes) > 10 else ''}) but spec.model.numClasses is "
                    f"{self.spec.model.num_classes}",
                )
            verify_up_front(train, self.spec)
            verify_up_front(val, self.spec)
            self._target = (train, val)
        return self._target

    def _check_weights(self, uri: str | None) -> None:
        if uri and not self._weights_checked:
            net = models.build(self.spec.model.backbone, self.spec.model.num_classes, self.spec.data.image_size)
            models.load_weights(net, uri)
            self._weights_checked = True

    def _init_backbone(self, ledger: Ledger) -> str | None:
        types = [s.type for s in self.spec.stages]
        if "Pretrain" in types:
            return ledger.stage("Pretrain").output
        return self.spec.model.weights

    def _check(self, stage, ledger: Ledger) -> None:
        if isinstance(stage, PretrainStage):
            src = data_mod.open_source(stage.data)
            if len(src.classes) != stage.num_classes:
                raise InputError(
                    stage.data,
                    f"has {len(src.classes)} classes but the Pretrain stage's numClasses is {stage.num_classes}",
                )
            verify_up_front(src, self.spec)
            return
        if isinstance(stage, HeadStage):
            return  # reads only the stored features
        self.target_data()
        if "Pretrain" not in [s.type for s in self.spec.stages]:
            self._check_weights(self.spec.model.weights)

    # -- stages --------------------------------------------------------------------------------

    def _cfg(self, index: int) -> dict[str, Any]:
        stage = self.spec.stages[index]
        return {
            "stage": stage.type,
            "index": index,
            "spec": self.spec.model_dump(mode="json", by_alias=True),
            "root": self.root,
            "run_name": stages.run_name(self.uid, stage.type),
            "checkpoint_root": storage.join(self.root, "checkpoints", stages.run_name(self.uid, stage.type)),
            "preprocessing": self.preprocessing,
        }

    def _run_stage(self, index: int, ledger: Ledger) -> dict[str, Any]:
        stage = self.spec.stages[index]
        cfg = self._cfg(index)
        outputs = storage.join(self.root, "outputs")
        if isinstance(stage, FrozenFeaturesStage):
            cfg["init_backbone"] = self._init_backbone(ledger)
            train, val = self.target_data()
            out = storage.join(self.root, "features")
            metrics = stages.frozen_features(cfg, stage, self.spec.workers, train, val, out)
            return {"metrics": metrics, "output": out, "checkpoint": None}
        if isinstance(stage, HeadStage):
            cfg["features"] = ledger.stage("FrozenFeatures").output
        if isinstance(stage, FullFineTuneStage):
            cfg["init_backbone"] = self._init_backbone(ledger)
            if "Head" in [s.type for s in self.spec.stages]:
                cfg["init_head"] = ledger.stage("Head").output
        keep = stage.keep_checkpoints if isinstance(stage, FullFineTuneStage) else 2
        outcome = stages.fit_stage(cfg, self.spec.workers, self.root, keep, self.max_failures)
        if outcome.state is None:
            raise RuntimeError(f"{cfg['run_name']}: the run reported no checkpoint")
        out = storage.join(outputs, f"{stage.type.lower()}.pt")
        if isinstance(stage, HeadStage):
            state = outcome.state["head"]
            _save_tensors(out, {"head.weight": state["weight"], "head.bias": state["bias"]})
        else:
            _save_tensors(out, outcome.state["model"])
        best = outcome.state["history"][outcome.state["epoch"] - 1]
        metrics = {k: v for k, v in best.items() if k not in ("epoch", "resumed_from")}
        metrics["best_epoch"] = float(outcome.state["epoch"])
        return {"metrics": metrics, "output": out, "checkpoint": outcome.best_checkpoint}

    def _export(self, ledger: Ledger) -> str:
        types = [s.type for s in self.spec.stages]
        arch, size = self.spec.model.backbone, self.spec.data.image_size
        if "FullFineTune" in types:
            state = models.read_state_dict(ledger.stage("FullFineTune").output)
            classes, num_classes, last = self.target_data()[0].classes, self.spec.model.num_classes, "FullFineTune"
        elif "Head" in types:
            net = models.build(arch, self.spec.model.num_classes, size)
            backbone = self._init_backbone(ledger)
            if backbone:
                models.load_weights(net, backbone)
            head = models.read_state_dict(ledger.stage("Head").output)
            net.head.load_state_dict({"weight": head["head.weight"], "bias": head["head.bias"]})
            state = net.state_dict()
            classes, num_classes, last = self.target_data()[0].classes, self.spec.model.num_classes, "Head"
        elif "Pretrain" in types:
            stage = self.spec.stages[types.index("Pretrain")]
            state = models.read_state_dict(ledger.stage("Pretrain").output)
            classes, num_classes, last = data_mod.open_source(stage.data).classes, stage.num_classes, "Pretrain"
        else:
            return ""  # FrozenFeatures alone produces features, not a model
        meta = {
            "architecture": arch,
            "num_classes": num_classes,
            "labels": classes,
            "preprocessing": {"image_size": size, "resize": "bilinear", **self.preprocessing},
            "metrics": ledger.stage(last).metrics,
            "stages": types,
            "job": {"name": self.job.metadata.name, "uid": self.uid},
            "load": "net = graft.trainer.models.build(architecture, num_classes, image_size); "
            "net.load_state_dict(torch.load('model.pt'))",
        }
        return export.export_model(self.root, state, meta)

    def run(self) -> Ledger:
        """Run (or resume) every stage, then export the model. Raises StageFailed on the first failure."""
        apply_storage_env(self.job)
        types = [s.type for s in self.spec.stages]
        ledger = Ledger.load_or_create(self.root, self.uid, self.job.metadata.name, types)
        ledger.attempt += 1
        ledger.message = None
        self._save(ledger)
        for index, stage in enumerate(self.spec.stages):
            rec = ledger.stage(stage.type)
            if rec.state in (StageState.SUCCEEDED, StageState.SKIPPED):
                continue
            rec.state = StageState.RUNNING
            rec.start_time = rec.start_time or now()
            rec.end_time = None
            rec.message = None
            rec.run_name = stages.run_name(self.uid, stage.type)
            rec.epochs = getattr(stage, "epochs", 1)
            self._save(ledger)
            started = time.monotonic()
            try:
                self._check(stage, ledger)
                ensure_ray(self.job, self.log_to_driver)
                result = self._run_stage(index, ledger)
            except Exception as exc:
                message = user_message(exc)
                log.error("stage %s failed: %s", stage.type, message)
                ledger = self._load()
                rec = ledger.stage(stage.type)
                rec.state = StageState.FAILED
                rec.end_time = now()
                rec.message = message
                rec.seconds = (rec.seconds or 0.0) + time.monotonic() - started
                ledger.message = f"{stage.type}: {message}"
                self._save(ledger)
                raise StageFailed(stage.type, message) from exc
            ledger = self._load()
            rec = ledger.stage(stage.type)
            rec.state = StageState.SUCCEEDED
            rec.end_time = now()
            rec.epoch = rec.epochs or 1
            rec.metrics = result["metrics"]
            rec.output = result["output"]
            rec.checkpoint = result["checkpoint"] or rec.checkpoint
            rec.seconds = (rec.seconds or 0.0) + time.monotonic() - started
            self._save(ledger)
        if ledger.model_uri is None:
            try:
                uri = self._export(ledger)
            except Exception as exc:
                ledger.message = f"export: {user_message(exc)}"
                self._save(ledger)
                raise StageFailed("export", user_message(exc)) from exc
            ledger.model_uri = uri or None
            self._save(ledger)
        return ledger
