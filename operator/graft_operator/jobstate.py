"""What the mirror loop keeps of each started job between its looks (`follow.py` decides what to do with it).

One explicit step (`Step`, like KubeRay's `JobDeploymentStatus` that its `Reconcile` switches on) instead of a flag
per situation, plus what the job's ledger reads have found (`LedgerView`) and when its pods were last looked at
(`pending.PendingCheck`).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from graft.api.models import TransferJobSpec
from graft.api.podsecurity import EXCEPTIONS
from graft.api.validation import validate_for_cluster
from graft_operator import ledgers, metrics, pending
from graft_operator.conditions import JDS, NOT_YET_RUN
from graft_operator.memory import log_ref

log = logging.getLogger("graft_operator")


class Step(StrEnum):
    """Where the mirror loop stands with a started job."""

    #: Its RayJob was just created here: the first status write waits (briefly) for KubeRay's first status.
    FIRST_STATUS = "FirstStatus"
    #: Mirroring the RayJob's status and the ledger's progress.
    FOLLOWING = "Following"
    #: The RayJob has finished: the finished status waits (a deadline at most) for the ledger's final read.
    FINAL_READ = "FinalRead"
    #: The status says finished (final): only the TTL clean-up and a final read that missed its deadline remain.
    FINISHED = "Finished"


class LedgerView:
    """What a job's ledger reads have found: the latest projection, and whether the reads answer."""

    def __init__(self) -> None:
        self.ledger: dict[str, Any] | None = None  # the projection the latest answered read found
        self.asked_jds: str | None = "<never>"  # the RayJob's jobDeploymentStatus when the latest read started
        self.asked_at = -math.inf
        self.answered_jds: str | None = None  # ... when the latest read that answered started
        self.failing_since: float | None = None  # when the first read failing since the last answer started
        self.problem: tuple[str, str] | None = None  # (reason, message) of the latest failed read
        #: A job whose RayJob this process created and whose trainer has not run yet: it has no ledger to read.
        self.unrun = False

    def due(self, jds: str, t: float, poll: float) -> bool:
        """A read is due: at each new RayJob state, and every `poll` seconds while the job runs or its reads fail.

        A job this process has just created has no ledger until its trainer runs: no read while its RayJob starts
        (two reads per job fewer; an adopted or resumed job is read at once, it may have run before)."""
        if self.unrun:
            if jds in NOT_YET_RUN:
                return False
            self.unrun = False
        return jds != self.asked_jds or (
            t - self.asked_at >= poll and (jds == JDS.RUNNING or self.failing_since is not None))

    def take(self, body: Any, jds: str, asked_at: float, outcome: ledgers.Outcome) -> None:
        """A read's outcome (the read started at `asked_at`, when the RayJob was `jds`)."""
        if outcome.problem is None:
            if outcome.ledger is not None:
                self.ledger = outcome.ledger
            self.answered_jds = jds
            # An answer after the deadline brings the progress up to date but does not clear the problem: a store
            # that is always a little slower than the deadline would otherwise flip the condition at every read.
            if not outcome.late:
                if self.failing_since is not None:
                    log.info("the ledger answered again", extra=log_ref(body))
                self.failing_since = self.problem = None
        elif not outcome.late:  # a hung read that ends in an error after its deadline tells nothing new
            metrics.RECONCILE_ERRORS.labels(handler="ledger").inc()
            if outcome.problem != self.problem:
                log.warning(f"cannot read the ledger: {outcome.problem[1]}", extra=log_ref(body))
            self.problem = outcome.problem
            if self.failing_since is None:
                self.failing_since = asked_at

    def shown_problem(self, t: float, deadline: float) -> tuple[str, str] | None:
        """The read problem the status shows: once reads have failed for at least the deadline (a timeout has by
        definition), so that one failed read among good ones does not flip the condition back and forth."""
        if self.failing_since is None or t - self.failing_since < deadline:
            return None
        return self.problem

    @property
    def answering(self) -> bool:
        """Reads answer within the deadline (the status's ledger part is as current as the last poll)."""
        return self.failing_since is None and self.answered_jds is not None


class Follower:
    """Per-job memory of the mirror loop: its step, its ledger reads, its pending check, the RayJob as written."""

    def __init__(self, wake: Callable[[], None] = lambda: None) -> None:
        self.step = Step.FOLLOWING
        self.since = 0.0  # when the step began (FirstStatus: its wait counts from then; FinalRead: the finish)
        self.reads = LedgerView()
        self.pending = pending.PendingCheck()
        self.written_rayjob: dict[str, Any] | None = None  # the RayJob as we last wrote it, until the watch sees it
        self.spec: tuple[Any, TransferJobSpec | None, list[Any]] | None = None  # (generation, spec, problems)
        #: The watch listed the job again (it was lost meanwhile): ask the API server for the RayJob at the next look.
        self.verify = False
        #: Ask for a look at the job (its ledger read answered): the mirror loop's, not the loop itself.
        self.wake = wake

    @property
    def unrun(self) -> bool:
        return self.reads.unrun

    @unrun.setter
    def unrun(self, value: bool) -> None:
        self.reads.unrun = value

    def created(self, rayjob: dict[str, Any], t: float) -> None:
        """This process has just created the job's RayJob: its first status waits for KubeRay's, its ledger for its
        trainer."""
        self.written_rayjob, self.unrun = rayjob, True
        self.step, self.since = Step.FIRST_STATUS, t

    def valid_spec(self, body: Any) -> TransferJobSpec | None:
        """The job's spec, validated once per generation (not per look); None, with a warning, when it is invalid."""
        generation = body["metadata"].get("generation")
        if self.spec is None or self.spec[0] != generation:
            # Every pod security exception allowed: a followed job's RayJob exists, made under the operator's policy
            # (lifecycle.allowed).
            self.spec = generation, *validate_for_cluster(copy.deepcopy(dict(body.get("spec") or {})), EXCEPTIONS)
        _, spec, problems = self.spec
        if spec is None:
            log.warning(f"not following, the spec is invalid: {'; '.join(map(str, problems))}", extra=log_ref(body))
        return spec
