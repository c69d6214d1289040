"""The driver: runs a TransferJob's stages in order through the stage registry (`registry.py`) and an
executor (Ray by default, `executors.LocalExecutor` in-process), keeping the ledger, then exports the model.

A rerun of the same job skips finished stages (ledger) and resumes the running one from its latest
checkpoint (Ray Train restores a run from `(storage_path, run name)`; names come from the job UID). A rerun
whose spec changed what a recorded stage's result depends on is refused (`SpecChanged`, see `identity.py`)
unless it asks to start over (`restart`) or to rerun from a stage (`from_stage`).
Bad input of every stage still to run (listing, class counts, decoding, weights) is found before the first of
them starts and is recorded as that stage's failure reason; nothing already written is touched.
One driver per job: `run()` holds the job's lease (`graft/lease.py`) from before its first ledger write to its end,
and every ledger write (its own and its stages') checks it still does.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

from graft import joblogs, lease, storage
from graft.api.models import StageState, TransferJob
from graft.ledger import DamagedLedger, Ledger, StageRecord, now
from graft_trainer import data as data_mod
from graft_trainer import (
    export_choice,
    identity,
    leakage,
    learning,
    logship,
    models,
    registry,
    serving,
    splits,
    stopping,
    timing,
    tracking,
)
from graft_trainer.config import StageConfig, run_name
from graft_trainer.context import StageContext
from graft_trainer.errors import InputError, out_of_memory, user_message
from graft_trainer.executors import RayExecutor
from graft_trainer.jobroot import absolute as _absolute
from graft_trainer.jobroot import apply_storage_env, job_uid, resolve_root

_log = logging.getLogger(__name__)


#: The reset number in a checkpoint URI (`.../checkpoints/<uid>-<stage>-r<N>/...`; no suffix is reset 0).
_RESET = re.compile(r"/checkpoints/[^/]+-r(\d+)/")


class SpecChanged(RuntimeError):
    """The job's spec changed what recorded results depend on; nothing was run or written."""

    def __init__(self, job: str, ledger_uri: str, changes: list[str], stage: str, index: int, total: int):
        self.changes, self.stage = changes, stage
        listed = "\n".join(f"  {c}" for c in changes) or "  (the recorded hashes differ; written by another Graft?)"
        super().__init__(
            f"job {job!r} was run before with another spec ({ledger_uri}), and its recorded results do not belong "
            f"to this one:\n{listed}\n"
            f"This invalidates stage {stage} ({index + 1} of {total}) and the stages after it. Either:\n"
            f"  --from-stage {stage}   rerun {stage} and the stages after it with this spec, keeping the earlier "
            "results\n"
            "  --restart   start over: a new run that reuses no earlier result\n"
            "or give the job another metadata.name to keep both."
        )


class StageFailed(RuntimeError):
    """A stage failed; the message (also in the ledger) names the URI and cause where there is one."""

    def __init__(self, stage: str, message: str):
        self.stage = stage
        super().__init__(f"stage {stage} failed: {message}")


def _absolute_paths(spec):
    """The spec with local paths made absolute (Ray workers resolve paths from another working directory) and an
    empty `data.imageSize` filled in (the backbone's default), so every stage and worker reads the same size."""
    paths = {"train": _absolute(spec.data.train), "validation": _absolute(spec.data.validation),
             "image_size": spec.data.image_size or models.default_image_size(spec.model.backbone)}
    data = spec.data.model_copy(update=paths)
    model = spec.model.model_copy(update={"weights": _absolute(spec.model.weights)})
    stages_ = [s.model_copy(update={f: _absolute(getattr(s, f)) for f in registry.kind(s.type).paths})
               for s in spec.stages]
    return spec.model_copy(update={"data": data, "model": model, "stages": stages_})


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
        executor=None,
        restart: bool = False,
        from_stage: str | None = None,
        force_takeover: bool = False,
        lease_wait: float = 0.0,
        held: lease.Lease | None = None,
    ):
        self.job = job
        self.spec = _absolute_paths(job.spec)
        self.uid = job_uid(job)
        self.root = resolve_root(job, storage_uri)
        self.executor = executor or RayExecutor(max_failures, log_to_driver)
        self.on_update = on_update or (lambda _l: None)
        types = [s.type for s in self.spec.stages]
        backbone = next((t for t in types if registry.kind(t).makes_backbone), None)
        self.context = StageContext(self.spec, self.root, self.executor, backbone)
        self.preprocessing = self.context.preprocessing
        if restart and from_stage:
            raise InputError("--from-stage", "give --restart or --from-stage, not both")
        if from_stage is not None and from_stage not in types:
            raise InputError("--from-stage", f"{from_stage!r} is not a stage of this job; its stages: {types}")
        self.restart, self.from_stage = restart, from_stage
        self.view = identity.view(self.spec)
        self.hashes = identity.hashes(self.view)
        self._prepared: Ledger | None = None
        self.tracker: tracking.Tracker | None = None
        # One writer per job (graft/lease.py). `held`: the lease `graft run` took before it loaded the trainer.
        self.lease: lease.Lease | None = held
        self.holder = held.holder if held is not None else lease.Holder.me()
        self.force_takeover, self.lease_wait = force_takeover, lease_wait

    # -- ledger --------------------------------------------------------------------------------

    def _save(self, ledger: Ledger) -> None:
        if self.tracker is not None:
            ledger.tracking = self.tracker.snapshot()
        ledger.save(self.root, self.holder)
        self.on_update(ledger)

    def _finish(self, stage_type: str, started: float, job_message: str | None, **fields) -> Ledger:
        """Record a stage's end in the ledger as the workers left it; a field given as None keeps its value."""
        ledger = Ledger.load(self.root)
        assert ledger is not None
        rec = ledger.stage(stage_type)
        for name, value in {"end_time": now(), **fields}.items():
            if value is not None:
                setattr(rec, name, value)
        rec.seconds = (rec.seconds or 0.0) + time.monotonic() - started
        rec.timing = timing.close(rec.timing, time.monotonic() - started)  # this attempt's parts, `driver` added
        ledger.message = job_message
        self._save(ledger)
        return ledger

    # -- what the stages get (tests and `graft validate` use these too) -------------------------

    def target_data(self) -> tuple[data_mod.Source, data_mod.Source]:
        """Train and validation sources of the target set (`StageContext.target_data`)."""
        return self.context.target_data()

    def weights(self) -> str | None:
        """Where `spec.model.weights` are read from (`StageContext.weights`)."""
        return self.context.weights()

    def check_weights(self) -> None:
        """`spec.model.weights` load into the backbone (`StageContext.check_weights`)."""
        self.context.check_weights()

    # -- the ledger this run continues -----------------------------------------------------------

    def prepare(self) -> Ledger:
        """Decide which ledger this run continues, writing nothing (`graft run` calls it before it shows any
        progress, so a refused rerun never shows the old results as this run's). Raises SpecChanged."""
        if self._prepared is None:
            apply_storage_env(self.job)
            self._prepared = self._ledger()
        return self._prepared

    def _ledger(self) -> Ledger:
        """The ledger this run continues: the recorded one when the spec still matches its results, a fresh one
        (`restart`), or the recorded one with `from_stage` and the stages after it set back. Raises SpecChanged
        (having written nothing) when the spec changed what a recorded stage depends on and neither was asked."""
        types = [s.type for s in self.spec.stages]
        try:
            old = Ledger.load(self.root)
        except DamagedLedger as exc:
            if not self.restart:
                raise
            return self._over_damaged(exc, types)
        if old is None:
            return Ledger.create(self.uid, self.job.metadata.name, types)
        if old.recovered:
            _log.warning(old.recovered)
        first = 0 if self.restart else types.index(self.from_stage) if self.from_stage else None
        bad = identity.first_invalidated(old, self.view)
        if bad is not None and (first is None or first > bad):
            raise SpecChanged(
                self.job.metadata.name or self.uid, Ledger.uri(self.root), identity.changed_fields(old, self.view),
                types[bad], bad, len(types),
            )
        if first is None:
            return old
        # One atomic write replaces the ledger: the kept stages' records, fresh ones from `first` on, with new
        # Ray run names (an old run's checkpoints are never resumed). Old files are overwritten as stages rerun.
        resets = old.resets + 1
        fresh = [old.stages[i] if i < first else StageRecord(type=t, run_name=run_name(self.uid, t, resets))
                 for i, t in enumerate(types)]
        keep = {"job_uid", "job_name", "attempt"} if self.restart else {"job_uid", "job_name", "attempt", "spec"}
        return Ledger(**{k: getattr(old, k) for k in keep}, stages=fresh, resets=resets).replacing(old.damage)

    def _over_damaged(self, exc: DamagedLedger, types: list[str]) -> Ledger:
        """`--restart` over a ledger that does not parse (nor its previous version): a fresh one, written over it once
        the damaged object is kept beside it. Its `resets` (unknown) is taken past every Ray run name the job's
        checkpoints use, so that no stage resumes an old run's checkpoints."""
        resets = 1 + max((int(m.group(1)) for m in map(_RESET.search, storage.list_dir(
            storage.join(self.root, "checkpoints"), recursive=True)) if m), default=0)
        _log.warning(f"{exc.damage.uri}: not a valid ledger ({exc.damage.cause}): starting over (--restart); the "
                     f"damaged object is kept as {exc.damage.aside}")
        stages_ = [StageRecord(type=t, run_name=run_name(self.uid, t, resets)) for t in types]
        return Ledger(job_uid=self.uid, job_name=self.job.metadata.name, stages=stages_, resets=resets
                      ).replacing(exc.damage)

    def _check_inputs(self, ledger: Ledger) -> None:
        """Every stage still to run checks its inputs now, before the first of them starts (a wrong numClasses
        fails in seconds, not after Pretrain). A failure is recorded as that stage's, which never started."""
        for stage in self.spec.stages:
            rec = ledger.stage(stage.type)
            if rec.state in (StageState.SUCCEEDED, StageState.SKIPPED):
                continue
            try:
                registry.kind(stage.type).check(self.context, stage)
            except Exception as exc:
                message = user_message(exc)
                rec.state, rec.message, rec.end_time = StageState.FAILED, message, now()
                ledger.message = f"{stage.type}: {message}"
                self._save(ledger)
                raise StageFailed(stage.type, message) from exc

    def _record_splits(self, ledger: Ledger) -> None:
        """The split sizes the stages are about to use, in the ledger (saved with the next stage's start). They only
        annotate results, so a job whose stages never read the target data goes on without them."""
        try:
            splits.record(ledger, self.context)
        except Exception as exc:
            _log.warning("could not count the data's splits (accuracies are shown without intervals): %s",
                         user_message(exc))

    def input_problems(self) -> list[tuple[str, str]]:
        """Every stage's input checks, the ones a run makes before its first stage (`_check_inputs`), for all the
        stages and without a ledger: `(stage type, message)` for each stage whose inputs fail, a message said once
        (stages share the target data's checks). Reads the data and weights; writes nothing and starts no Ray
        (`graft validate --check-data`)."""
        apply_storage_env(self.job)
        problems: list[tuple[str, str]] = []
        for stage in self.spec.stages:
            try:
                registry.kind(stage.type).check(self.context, stage)
            except Exception as exc:
                message = user_message(exc)
                if all(message != m for _, m in problems):
                    problems.append((stage.type, message))
        return problems

    def acquire_lease(self) -> None:
        """Take the job's lease (see graft/lease.py) unless this driver holds it: waits up to `lease_wait` seconds
        for another driver's to end, then raises LeaseHeld (one line). A ledger read before is read again."""
        if self.lease is None:
            apply_storage_env(self.job)
            self.lease = lease.acquire(self.root, self.job.metadata.name or self.uid, self.holder,
                                       force=self.force_takeover, wait=self.lease_wait)
            self._prepared = None

    def release_lease(self) -> None:
        """Give the lease up (a lost one is left to its new holder)."""
        held, self.lease = self.lease, None
        if held is not None:
            held.release()

    def run(self) -> Ledger:
        """Take the job's lease (LeaseHeld when another driver holds it), run (or resume) every stage, then export
        the model; the lease is renewed meanwhile and released at the end, however it ends. Raises SpecChanged
        before anything when the spec no longer matches the recorded results, StageFailed on the first failure,
        LeaseLost when another driver took the job over (nothing more is written)."""
        self.acquire_lease()
        assert self.lease is not None
        try:
            with self.lease.renewing():
                return self._run_leased()
        finally:
            self.release_lease()

    def _run_leased(self) -> Ledger:
        ledger, self._prepared = self.prepare(), None
        ledger.attempt += 1
        assert self.lease is not None
        self.lease.renew(attempt=ledger.attempt)
        ledger.message = None
        ledger.spec = self.view
        params = self.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
        try:
            self.tracker = tracking.start(self.job, params, self.root, self.uid, ledger)
        except Exception as exc:  # e.g. no MLflow client in the image: tracking never fails the job
            ledger.tracking = tracking.not_started(self.job, exc)
        try:
            ledger = self._run(ledger)
        except KeyboardInterrupt:
            # Interrupted to be resumed (graft run's Ctrl-C): the MLflow runs stay open for the rerun, and the user
            # does not wait on MLflow.
            if self.tracker is not None:
                self.tracker.stop()
                self.tracker = None
            raise
        except BaseException:
            self._finish_tracking()
            raise
        return self._finish_tracking() or ledger

    def _finish_tracking(self) -> Ledger | None:
        """The tracker's last pass, with the ledger as the run left it; its outcome is recorded in the ledger. A
        tracking failure never fails the job (the record says it)."""
        tracker, self.tracker = self.tracker, None
        if tracker is None:
            return None
        try:
            ledger = Ledger.load(self.root)
            if ledger is not None:
                ledger.tracking = tracker.finish(ledger)
                self._save(ledger)
            return ledger
        except Exception:  # storage down as well: the run's own error (if any) is the one to raise
            return None

    def _run_stage(self, ledger: Ledger, index: int, stage) -> Ledger:
        """Run one stage and record its end: Succeeded, or Failed (StageFailed) when it raised or did not learn
        (`learning.py`, with `spec.checks.learning.action: Fail`)."""
        stopping.check()  # a stop whose exception was lost (stopping.install) ends the driver before more work
        rec = ledger.stage(stage.type)
        rec.state = StageState.RUNNING
        rec.start_time = rec.start_time or now()
        rec.end_time = rec.message = rec.finding = rec.learning = None
        rec.timing = {}  # this attempt's (graft_trainer/timing.py)
        rec.run_name = rec.run_name or run_name(self.uid, stage.type)
        rec.spec_hash = self.hashes[index]
        rec.epochs = getattr(stage, "epochs", 1)
        if self.tracker is not None:
            self.tracker.started()
        self._save(ledger)
        t0 = time.monotonic()
        with logship.capture(self.root, stage.type, joblogs.DRIVER) as log:
            log.line(f"stage {stage.type} ({index + 1} of {len(self.spec.stages)}), attempt {ledger.attempt}")
            try:
                kind = registry.kind(stage.type)
                cfg = StageConfig(self.spec, index, self.root, rec.run_name,
                                  **kind.inputs(self.context, ledger), lease=self.holder)
                result = kind.scored(self.context, cfg, kind.run(self.context, cfg))
                verdict = learning.verdict(kind, self.context, cfg, result, self.spec.checks.learning)
            except Exception as exc:
                message = out_of_memory(exc, index, self.spec) or user_message(exc)
                self._finish(stage.type, t0, f"{stage.type}: {message}", state=StageState.FAILED, message=message)
                log.line(f"stage {stage.type} failed: {message}")
                raise StageFailed(stage.type, message) from exc
            # The result's fields (metrics, output, checkpoint, ...) are ledger fields of the same names; a stage
            # that stopped early says at which epoch, the others ran all of them.
            fields = {**vars(result), "epoch": result.epoch or rec.epochs, **learning.ledger_fields(verdict)}
            if verdict is not None and verdict.finding and self.spec.checks.learning.action == "Fail":
                message = verdict.finding["message"]  # never exported: the job stops here
                self._finish(stage.type, t0, f"{stage.type}: {message}", **fields, state=StageState.FAILED,
                             message=message)
                log.line(f"stage {stage.type} failed: {message}")
                raise StageFailed(stage.type, message)
            ledger = self._finish(stage.type, t0, None, state=StageState.SUCCEEDED, **fields)
            log.line(f"stage {stage.type} succeeded in {time.monotonic() - t0:.1f}s: "
                     f"{logship.metrics_text(result.metrics)}")
            if verdict is not None and verdict.finding:
                log.line(f"stage {stage.type} {verdict.finding['message']}")
        return ledger

    def _run(self, ledger: Ledger) -> Ledger:
        self._save(ledger)
        self._check_inputs(ledger)
        if leakage.record(ledger, self.context, self.spec):  # images shared by splits that must share none: a warning
            self._save(ledger)
        if not ledger.done:
            self._record_splits(ledger)
        for index, stage in enumerate(self.spec.stages):
            if ledger.stage(stage.type).state not in (StageState.SUCCEEDED, StageState.SKIPPED):
                ledger = self._run_stage(ledger, index, stage)
        if ledger.model_uri is None:
            stopping.check()  # a lost stop in the last stage: resumable, the export comes with the next attempt
            try:
                uri = export_choice.export_job(self.context, {"name": self.job.metadata.name, "uid": self.uid},
                                               ledger)
            except Exception as exc:
                ledger.message = f"export: {user_message(exc)}"
                self._save(ledger)
                raise StageFailed("export", user_message(exc)) from exc
            if uri and self.spec.serving.export:  # ONNX, Triton repository, InferenceService (never fails the job)
                ledger.serving = serving.status_of(uri, serving.export_after_job(uri, self.job))
            ledger.model_uri = uri or None
            self._save(ledger)
        return ledger
