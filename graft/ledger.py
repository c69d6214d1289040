"""The ledger: the durable record of a job's progress, at `<storage.uri>/<job uid>/ledger.json`.

The trainer writes it (after every epoch and stage); the operator and `graft status` read it. It is
what a retried or resumed run consults to skip finished stages and resume the running one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from graft import lease, storage
from graft.api.models import ModelStatus, StageState, StageStatus, TrackingStatus, TransferJobStatus

LEDGER_FILE = "ledger.json"
#: The last complete version, written by every save just before ledger.json (see `Ledger.save`).
PREV_FILE = LEDGER_FILE + ".prev"
LEDGER_VERSION = 1
#: The parts of a stage's time (`StageRecord.timing`), in the order they happen; `graft_trainer/timing.py` says
#: what each is.
TIMING_PARTS = ("ray_init", "startup", "data", "compute", "checkpoint", "teardown", "driver")

_log = logging.getLogger(__name__)


def now() -> str:
    """The current time in RFC 3339, as Kubernetes writes it."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def seconds_since(timestamp: str) -> float:
    """Seconds from an RFC 3339 timestamp (as `now()` writes it) to now; negative for one in the future."""
    return (datetime.now(UTC) - datetime.fromisoformat(timestamp.replace("Z", "+00:00"))).total_seconds()


def job_root(storage_uri: str, uid: str) -> str:
    """Where a job writes: `<storage.uri>/<job uid>`."""
    return storage.join(storage_uri, uid)


@dataclass(frozen=True)
class Damage:
    """A ledger.json that does not parse: where, why, its bytes, and where a writer keeps it (`aside`)."""

    uri: str
    cause: str
    data: bytes
    aside: str


class DamagedLedger(ValueError):
    """A ledger.json that does not parse, with no good previous version to recover from."""

    def __init__(self, damage: Damage, prev_uri: str, prev_cause: str):
        self.damage, self.prev_uri, self.prev_cause = damage, prev_uri, prev_cause
        super().__init__(self.line())

    def line(self, restart: str = "rerun with --restart", start_over: str | None = None) -> str:
        """One line: the object, what is wrong with it, and the two ways out: `restart` is the command that starts
        over (keeping the damaged object), or `start_over` says the whole way."""
        d = self.damage
        way = start_over or f"{restart} to start over (the damaged object is kept as {d.aside.rsplit('/', 1)[-1]})"
        return (f"{d.uri}: not a valid ledger ({d.cause}), and no good previous version ({self.prev_uri}: "
                f"{self.prev_cause}); either {way}, or put a good {LEDGER_FILE} back")


#: JSON's literal words: a ledger cut short inside one of them is truncated, not garbage.
_LITERALS = ("true", "false", "null")


def _parse(data: bytes) -> tuple[Ledger | None, str | None]:
    """(the ledger, None), or (None, what is wrong with the bytes)."""
    if not data.strip():
        return None, "empty" if not data else "only whitespace"
    try:
        doc = json.loads(data)
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except json.JSONDecodeError as exc:
        # Cut short: the parser ran out of text (or inside a string that never ends, or a true/false/null).
        rest = exc.doc[exc.pos:].strip()
        if exc.msg.startswith("Unterminated string") or not rest or any(w.startswith(rest) for w in _LITERALS):
            return None, f"truncated JSON at byte {len(data)}"
        return None, f"not JSON: {exc.msg} at offset {exc.pos}"
    try:
        return Ledger.model_validate(doc), None
    except ValidationError as exc:
        err = exc.errors()[0]
        return None, f"not a ledger: {'.'.join(str(x) for x in err['loc']) or '(top level)'}: {err['msg']}"


def _aside_uri(uri: str) -> str:
    return f"{uri}.damaged-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"


class StageRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    state: StageState = StageState.PENDING
    run_name: str | None = None
    start_time: str | None = None
    end_time: str | None = None
    epoch: int = 0
    epochs: int | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    history: list[dict[str, float]] = Field(default_factory=list)
    checkpoint: str | None = None
    output: str | None = None
    message: str | None = None
    seconds: float | None = None
    #: The Head sweep: one row per setting (its settings, best validation scores, best epoch, stop epoch).
    sweep: list[dict[str, float]] | None = None
    #: The row of `sweep` the stage's result is (chosen by validation).
    chosen: int | None = None
    #: Why the stage ended where it did: early stopping (the epoch and the metric) or all epochs run.
    stop: str | None = None
    #: FullFineTune's weight interpolation: `curve` (alpha, val_accuracy, val_loss per alpha), the chosen `alpha`,
    #: the interpolated weights' `output` and their `metrics` (validation, test, calibration).
    interpolation: dict[str, Any] | None = None
    #: Hash of what this stage's result depends on (its spec fields and earlier stages'), written when it starts;
    #: None in ledgers written before 2026-12 (then "unknown": a rerun accepts the stage as it is).
    spec_hash: str | None = None
    #: What a resume of this stage passed over, one line each: an incomplete checkpoint and what it resumed from
    #: instead (`graft_trainer/checkpoints.py`).
    notes: list[str] = Field(default_factory=list)
    #: Where the latest attempt's time went, seconds per part (`TIMING_PARTS`: Ray's start, the worker group's start-up,
    #: data, compute, checkpoints and reports, teardown, the driver's own work): written as the stage runs, `driver`
    #: when it ends. Empty in ledgers written before 2026-12.
    timing: dict[str, float] = Field(default_factory=dict)
    #: The learning check's account (`graft_trainer/learning.py`): the accuracy against chance and the training loss,
    #: or why either was not judged. None for a stage that trains nothing, or one recorded before 2026-12.
    learning: str | None = None
    #: What the checks found wrong with the result: {"kind": "NotLearning", "message": ...}; None when nothing.
    finding: dict[str, str] | None = None

    def timing_text(self) -> str:
        """`startup 14.2s, data 1.1s, ...`: the parts of at least 0.05 s, in order (one line for `graft status`)."""
        return ", ".join(f"{k} {self.timing[k]:.1f}s" for k in TIMING_PARTS if self.timing.get(k, 0.0) >= 0.05)


class TrackingRecord(BaseModel):
    """Where the job is tracked in MLflow (`spec.tracking.mlflow`), written by the driver only: a retried or resumed
    run continues `run_id` and its per-stage runs instead of opening new ones."""

    model_config = ConfigDict(extra="ignore")

    #: Tracking (logging as the job runs), Succeeded (all logged, the model registered) or Failed (see message).
    state: str = "Tracking"
    tracking_uri: str
    experiment_id: str | None = None
    run_id: str | None = None
    #: Stage type -> its nested run's id.
    stage_runs: dict[str, str] = Field(default_factory=dict)
    registered_model: str | None = None
    model_version: str | None = None
    message: str | None = None

    def describe(self) -> str:
        """One line for `graft status` and `graft run`: the run and model version, or why tracking failed."""
        if self.state == "Failed":
            return f"mlflow: {self.message}"
        line = f"mlflow: run {self.run_id or '(not created yet)'} at {self.tracking_uri}"
        if self.model_version:
            line += f", model {self.registered_model} version {self.model_version}"
        if self.message:  # a pass failing now, retried
            line += f" ({self.message})"
        return line

    def to_status(self) -> dict[str, Any]:
        """`status.tracking` (camelCase, as the CRD declares it); fields not known yet are left out."""
        return TrackingStatus.model_validate(self.model_dump(include=set(TrackingStatus.model_fields))).model_dump(
            by_alias=True, mode="json", exclude_none=True)


class Ledger(BaseModel):
    model_config = ConfigDict(extra="ignore")

    version: int = LEDGER_VERSION
    job_uid: str
    job_name: str | None = None
    stages: list[StageRecord]
    model_uri: str | None = None
    attempt: int = 0
    updated_at: str = Field(default_factory=now)
    message: str | None = None
    #: The result-determining part of the spec the recorded results came from (model, data, stages), so that a
    #: rerun with a changed spec can name the changed fields. None in ledgers written before 2026-12.
    spec: dict[str, Any] | None = None
    #: How many times `--restart` or `--from-stage` set stages back; it suffixes their Ray run names so that a
    #: rerun never resumes an old run's checkpoints.
    resets: int = 0
    #: MLflow tracking of this job (None: not tracked).
    tracking: TrackingRecord | None = None
    #: Which stage's model was exported and why: the last stage's unless another candidate is better on validation
    #: beyond the noise (`graft_trainer/selection.py`). {"stage": ..., "reason": ...}.
    export: dict[str, str] | None = None
    #: The exported model's serving files (`graft_trainer/serving.py`), as `status.model` names them: onnx,
    #: tritonRepository, inferenceService (URIs), servedName. None before the export or when it wrote none.
    serving: dict[str, str] | None = None
    #: Images shared by splits that must share none (`graft_trainer/leakage.py`), one line each; [] when none was
    #: found, None when not checked (a ledger from before 2026-12-07, or a job too large to check on its own).
    leakage: list[str] | None = None
    #: How many images the target data's splits hold as the stages used them ({"train", "validation", "test"}: after
    #: the test split and the few-shot draw), for the intervals beside every accuracy (`graft/uncertainty.py`). None
    #: in ledgers written before 2026-12.
    splits: dict[str, int] | None = None
    #: The same for a stage that trains on its own data set (Pretrain's `data`), by stage type.
    stage_splits: dict[str, dict[str, int]] = Field(default_factory=dict)
    #: Set by `load` when ledger.json did not parse and this is its previous version: the next `save` keeps the
    #: damaged object beside it (`Damage.aside`) before writing.
    _damage: Damage | None = PrivateAttr(default=None)

    # -- queries ------------------------------------------------------------------------------

    def stage(self, type_: str) -> StageRecord:
        for s in self.stages:
            if s.type == type_:
                return s
        raise KeyError(type_)

    @property
    def current(self) -> StageRecord | None:
        """The running stage, else the first not finished, else the last."""
        for s in self.stages:
            if s.state == StageState.RUNNING:
                return s
        for s in self.stages:
            if s.state not in (StageState.SUCCEEDED, StageState.SKIPPED):
                return s
        return self.stages[-1] if self.stages else None

    @property
    def done(self) -> bool:
        return all(s.state in (StageState.SUCCEEDED, StageState.SKIPPED) for s in self.stages)

    @property
    def failed(self) -> StageRecord | None:
        return next((s for s in self.stages if s.state == StageState.FAILED), None)

    def progress(self) -> str:
        finished = sum(s.state in (StageState.SUCCEEDED, StageState.SKIPPED) for s in self.stages)
        return f"{finished}/{len(self.stages)}"

    # -- I/O -----------------------------------------------------------------------------------

    @staticmethod
    def uri(root: str) -> str:
        return storage.join(root, LEDGER_FILE)

    @staticmethod
    def prev_uri(root: str) -> str:
        return storage.join(root, PREV_FILE)

    @classmethod
    def load(cls, root: str, options: storage.S3Options | None = None) -> Ledger | None:
        """The ledger under a job root, or None when the job has not written one yet.

        A ledger.json that does not parse is never taken as "no ledger": its previous version (`ledger.json.prev`)
        is returned instead (`recovered` says so), or DamagedLedger is raised when that is no good either.
        `options` carries explicit S3 settings (the operator's, from the job's Secret) instead of the environment's."""
        uri = cls.uri(root)
        try:
            data = storage.read_bytes(uri, options)
        except FileNotFoundError:
            return None
        ledger, cause = _parse(data)
        if ledger is not None:
            return ledger
        damage = Damage(uri, cause, data, _aside_uri(uri))
        try:
            prev = storage.read_bytes(cls.prev_uri(root), options)
        except FileNotFoundError:
            raise DamagedLedger(damage, cls.prev_uri(root), "not found") from None
        recovered, prev_cause = _parse(prev)
        if recovered is None:
            raise DamagedLedger(damage, cls.prev_uri(root), prev_cause)
        recovered._damage = damage
        return recovered

    @property
    def recovered(self) -> str | None:
        """One line when `load` recovered this ledger from its previous version, else None."""
        d = self._damage
        if d is None:
            return None
        return f"{d.uri}: not a valid ledger ({d.cause}); recovered from {PREV_FILE} (written {self.updated_at})"

    def replacing(self, damage: Damage | None) -> Ledger:
        """This ledger, to be written over a damaged one: the next `save` keeps that one beside it first."""
        self._damage = damage
        return self

    @property
    def damage(self) -> Damage | None:
        """The damaged ledger.json the next `save` keeps aside (see `load`, `replacing`)."""
        return self._damage

    def save(self, root: str, holder: lease.Holder | None = None) -> None:
        """Write atomically: a concurrent reader sees the previous or this version, whole.

        `holder`: the writer's lease (`graft/lease.py`); it is checked first, and a writer that lost it gets
        LeaseLost instead of overwriting the ledger of the driver that took over.

        The same document goes to ledger.json.prev first, then to ledger.json: whichever of the two writes is cut
        short, the other object holds a complete version (the newest one, when ledger.json is the one cut short),
        for two writes and no read. A ledger.json that did not parse is kept beside it first (`Damage.aside`)."""
        if holder is not None:
            lease.check(root, holder)
        self.updated_at = now()
        doc = self.model_dump(mode="json")
        if self._damage is not None:
            storage.write_bytes(self._damage.aside, self._damage.data)
            _log.warning("kept the damaged %s as %s", self._damage.uri, self._damage.aside)
            self._damage = None
        storage.write_json(self.prev_uri(root), doc)
        storage.write_json(self.uri(root), doc)

    @classmethod
    def create(cls, uid: str, name: str | None, stage_types: list[str]) -> Ledger:
        return cls(job_uid=uid, job_name=name, stages=[StageRecord(type=t) for t in stage_types])

    def to_status(self) -> dict[str, Any]:
        """The ledger's part of a TransferJob status (`TransferJobStatus`'s stages, stage, progress, modelURI and,
        for a tracked job, tracking), camelCase as the CRD declares it; fields not known yet are left out."""
        stages = []
        for s in self.stages:
            known = {"start_time": s.start_time, "end_time": s.end_time, "epoch": s.epoch or None, "epochs": s.epochs,
                     "metrics": dict(s.metrics) or None, "checkpoint": s.checkpoint, "message": s.message,
                     "finding": s.finding}
            stages.append(StageStatus(type=s.type, state=s.state, **{k: v for k, v in known.items() if v is not None}))
        cur = self.current
        projection = TransferJobStatus(stages=stages, stage=cur.type if cur else None, progress=self.progress(),
                                       model_uri=self.model_uri)
        if self.model_uri:
            projection.model = ModelStatus.model_validate({"uri": self.model_uri, **(self.serving or {})})
        if self.tracking is not None:  # only jobs with spec.tracking have it
            projection.tracking = TrackingStatus.model_validate(self.tracking.to_status())
        return projection.model_dump(by_alias=True, mode="json", exclude_unset=True)
