"""One look at a job (`follow.sync`) never waits for its ledger read (issue 10): RayJob transitions are written at
once and the read's outcome later; only a finished job waits for its final read, and no longer than the deadline."""

from __future__ import annotations

import asyncio
import copy

import pytest

from graft.api.validation import validate_spec
from graft_operator import builder, follow, ledgers, memory, status
from graft_operator.supervisor import Supervisor

SPEC = {
    "model": {"backbone": "smallcnn", "numClasses": 10, "weights": "s3://models/w.pt"},
    "data": {"train": "builtin:digits"},
    "stages": [{"type": "FrozenFeatures"}, {"type": "Head"}],
    "storage": {"uri": "s3://bucket/jobs"},
}
UID, NS, NAME = "uid-1", "ml", "job"
RJ = builder.rayjob_name(NAME, UID)
DEADLINE = 0.2
RUNNING_LEDGER = {"stages": [{"type": "FrozenFeatures", "state": "Succeeded"}, {"type": "Head", "state": "Running"}],
                  "stage": "Head", "progress": "1/2", "modelURI": None}
FINAL_LEDGER = {"stages": [{"type": "FrozenFeatures", "state": "Succeeded"}, {"type": "Head", "state": "Succeeded"}],
                "stage": "Head", "progress": "2/2", "modelURI": "s3://bucket/jobs/uid-1/model"}


class FakeReads:
    """Reads that answer only when the test says (`answer`), like storage that may hang."""

    timeout = DEADLINE

    def __init__(self) -> None:
        self.pending: list = []
        self.waiting_turn = False  # the pending read waits for a slot behind other jobs' reads (Reads.queued)

    def queued(self, uid) -> bool:
        return bool(self.pending) and self.waiting_turn

    def start(self, uid, namespace, spec, deliver, urgent=False) -> bool:
        if self.pending:
            return False
        self.pending.append(deliver)
        return True

    def answer(self, outcome: ledgers.Outcome, keep_busy: bool = False) -> None:
        deliver = self.pending[0] if keep_busy else self.pending.pop(0)
        deliver(outcome)

    def busy(self, uid) -> bool:
        return bool(self.pending)

    async def close(self) -> None:
        pass


class FakeKube:
    """The API as far as one job's sync sees it: the status subresource it patches."""

    def __init__(self) -> None:
        self.stored: dict = {}
        self.writes: list[dict] = []

    async def merge_patch(self, kind, name, namespace, body, *, status=False):
        assert (kind, name, namespace, status) == ("TransferJob", NAME, NS, True)
        patch = body["status"]
        self.writes.append(patch)
        self.stored = {k: v for k, v in {**self.stored, **patch}.items() if v is not None}
        return {"status": copy.deepcopy(self.stored)}


class Job:
    """One job's sync against its RayJob (as the watch saw it, in kopf's index) and its status writes."""

    def __init__(self, monkeypatch):
        self.api = FakeKube()
        self.mem = memory.Memory(self.api)
        self.mem.reads = self.reads = FakeReads()
        self.mem.supervisor = Supervisor(self.mem)
        self.index: dict = {}
        self.mem.rayjobs = self.index  # kopf's index: key -> the values (one RayJob)
        self.follower = follow.Follower()
        monkeypatch.setattr(follow, "POLL_SECONDS", 0.05)
        self.events: list[tuple] = []
        monkeypatch.setattr(memory, "event", lambda body, *event: self.events.append(event))
        self.spec, problems = validate_spec(copy.deepcopy(SPEC))
        assert not problems
        self.body = {"metadata": {"uid": UID, "name": NAME, "namespace": NS, "generation": 1}, "spec": SPEC}

    @property
    def stored(self) -> dict:
        return self.api.stored

    @property
    def writes(self) -> list[dict]:
        return self.api.writes

    async def look(self, jds: str, **rj_status) -> dict:
        self.index[(NS, RJ)] = [{"metadata": {"name": RJ, "namespace": NS},
                                 "status": {"jobDeploymentStatus": jds, **rj_status}}]
        return await follow.sync(self.mem, self.body, self.spec, self.follower)


def _cond(st, type_):
    return status.condition(st, type_) or {}


def _ledger_cond(st):
    c = status.condition(st, status.LEDGER_CONDITION)
    return c and {k: c[k] for k in ("status", "reason")}


@pytest.fixture()
def job(monkeypatch):
    return Job(monkeypatch)


def test_a_transition_is_written_at_once_while_the_read_hangs_and_the_status_then_says_so(job):
    async def scenario():
        await job.look("Running", jobStatus="RUNNING")
        running = job.stored
        assert (running["phase"], _cond(running, "Running")["status"]) == ("Running", "True")
        assert running["progress"] == "0/2" and _ledger_cond(running) is None  # nothing read, nothing claimed yet
        # The deadline passes: the status says the ledger could not be read, and keeps the phase.
        job.reads.answer(ledgers.Outcome(problem=ledgers.timeout_problem("s3://x/ledger.json", DEADLINE)),
                         keep_busy=True)
        await asyncio.sleep(DEADLINE)
        await job.look("Running", jobStatus="RUNNING")
        assert _ledger_cond(job.stored) == {"status": "False", "reason": "LedgerTimeout"}
        assert job.stored["phase"] == "Running"
        # Polls while the read still hangs write nothing (no flapping).
        writes = len(job.writes)
        for _ in range(3):
            await job.look("Running", jobStatus="RUNNING")
        assert len(job.writes) == writes
        # The hung read answers after all: the progress arrives, but its reads still do not answer in time.
        job.reads.answer(ledgers.Outcome(ledger=RUNNING_LEDGER, late=True))
        await job.look("Running", jobStatus="RUNNING")
        assert job.stored["progress"] == "1/2"
        assert _ledger_cond(job.stored) == {"status": "False", "reason": "LedgerTimeout"}
        # The next read answers within the deadline: the condition says the progress is current again.
        await asyncio.sleep(follow.POLL_SECONDS)
        await job.look("Running", jobStatus="RUNNING")
        job.reads.answer(ledgers.Outcome(ledger=RUNNING_LEDGER))
        await job.look("Running", jobStatus="RUNNING")
        assert _ledger_cond(job.stored) == {"status": "True", "reason": "LedgerRead"}

    asyncio.run(scenario())


def test_a_finished_job_is_written_once_with_its_final_ledger(job):
    async def scenario():
        await job.look("Running", jobStatus="RUNNING")
        job.reads.answer(ledgers.Outcome(ledger=RUNNING_LEDGER))
        await job.look("Running", jobStatus="RUNNING")
        assert job.stored["progress"] == "1/2"
        writes = len(job.writes)
        await job.look("Complete", jobStatus="SUCCEEDED")
        assert len(job.writes) == writes, "a finished job was written before its final ledger read answered"
        job.reads.answer(ledgers.Outcome(ledger=FINAL_LEDGER))
        await job.look("Complete", jobStatus="SUCCEEDED")
        done = job.stored
        assert (done["phase"], done["progress"], done["modelURI"]) == ("Succeeded", "2/2", FINAL_LEDGER["modelURI"])
        assert done["message"] == f"all stages succeeded; model at {FINAL_LEDGER['modelURI']}"
        assert job.events[-1] == ("Normal", "Succeeded", done["message"])

    asyncio.run(scenario())


def test_a_finished_job_whose_read_hangs_is_written_at_the_deadline_and_completed_later(job):
    async def scenario():
        await job.look("Running", jobStatus="RUNNING")
        job.reads.answer(ledgers.Outcome(ledger=RUNNING_LEDGER))
        await job.look("Running", jobStatus="RUNNING")
        await job.look("Complete", jobStatus="SUCCEEDED")  # its final read starts, and hangs
        assert job.stored["phase"] == "Running"
        await asyncio.sleep(DEADLINE)
        await job.look("Complete", jobStatus="SUCCEEDED")
        done = job.stored
        assert done["phase"] == "Succeeded" and "no ledger was read" in done["message"]
        assert done["progress"] == "1/2"  # the last read, not claimed as final:
        assert _ledger_cond(done) == {"status": "False", "reason": "LedgerTimeout"}
        assert follow.final_read_missing(done)
        await job.look("Complete", jobStatus="SUCCEEDED")  # what was read before the finish answers nothing now
        assert _ledger_cond(job.stored) == {"status": "False", "reason": "LedgerTimeout"}
        # The read answers after all: the results are filled in; the phase and the transition's message stay.
        job.reads.answer(ledgers.Outcome(ledger=FINAL_LEDGER, late=True))
        await job.look("Complete", jobStatus="SUCCEEDED")
        filled = job.stored
        assert (filled["phase"], filled["message"]) == ("Succeeded", done["message"])
        assert (filled["progress"], filled["modelURI"]) == ("2/2", FINAL_LEDGER["modelURI"])
        assert _ledger_cond(filled) == {"status": "True", "reason": "LedgerRead"}
        assert not follow.final_read_missing(filled)

    asyncio.run(scenario())


def test_a_finished_job_whose_read_waits_its_turn_is_written_once_when_it_answers(job):
    async def scenario():
        await job.look("Running", jobStatus="RUNNING")
        job.reads.answer(ledgers.Outcome(ledger=RUNNING_LEDGER))
        await job.look("Running", jobStatus="RUNNING")
        writes = len(job.writes)
        await job.look("Complete", jobStatus="SUCCEEDED")  # its final read waits behind many jobs' reads
        job.reads.waiting_turn = True
        await asyncio.sleep(DEADLINE * 1.5)
        await job.look("Complete", jobStatus="SUCCEEDED")
        assert len(job.writes) == writes, "a read waiting its turn was reported as storage trouble"
        job.reads.answer(ledgers.Outcome(ledger=FINAL_LEDGER))
        await job.look("Complete", jobStatus="SUCCEEDED")
        assert len(job.writes) == writes + 1
        done = job.stored
        assert (done["phase"], done["progress"], done["modelURI"]) == ("Succeeded", "2/2", FINAL_LEDGER["modelURI"])
        assert _ledger_cond(done) is None

    asyncio.run(scenario())


@pytest.mark.parametrize("unrun", [True, False], ids=["created-here", "adopted-or-resumed"])
def test_a_job_created_here_has_no_ledger_to_read_until_its_trainer_runs(job, unrun):
    job.follower.unrun = unrun  # what Supervisor.follow_new says of a RayJob this process has just created

    async def scenario():
        await job.look("Initializing")
        # Nothing can have written the ledger of a job created a moment ago; an adopted job may have run before.
        assert len(job.reads.pending) == (0 if unrun else 1)
        if not unrun:
            job.reads.answer(ledgers.Outcome(ledger=None))
        await job.look("Running", jobStatus="RUNNING")
        assert len(job.reads.pending) == 1  # its trainer runs: read from now on
        job.reads.answer(ledgers.Outcome(ledger=RUNNING_LEDGER))
        await job.look("Running", jobStatus="RUNNING")
        assert job.stored["progress"] == "1/2"

    asyncio.run(scenario())


def test_kuberays_own_starting_step_is_not_written_alone_but_carried_by_the_next_write(job):
    """A burst: the job's first status is written before KubeRay gets to its RayJob. KubeRay's New -> Initializing
    (its jobStatus and startTime) changes nothing the job's phase, reason or conditions say; the next change does.

    KubeRay's side, from ray-project/kuberay ray-operator/controllers/ray/rayjob_controller.go: `initRayJobStatusIfNeed`
    is the one place that sets Initializing, together with JobStatus (New, "") and StartTime; the controller runs
    `MaxConcurrentReconciles: reconcileConcurrency` reconciles at once (the operator's `--reconcile-concurrency`, 1 by
    default), so in a burst a RayJob can wait seconds for it."""
    job.follower.unrun = True
    started = "2026-12-02T10:00:00Z"

    async def scenario():
        await job.look("")  # KubeRay has not written the RayJob's status yet
        assert len(job.writes) == 1
        first = job.stored
        assert (first["phase"], first["reason"], first["rayJobName"]) == ("Pending", "ClusterStarting", RJ)
        await job.look("Initializing", jobStatus="", startTime=started)
        await job.look("Initializing", jobStatus="PENDING", startTime=started)
        assert len(job.writes) == 1, f"KubeRay's starting step was written alone: {job.writes[1:]}"
        # What a user would see does change: that is written, and it carries KubeRay's fields with it.
        await job.look("Initializing", jobStatus="PENDING", startTime=started, message="Secret s3 not found")
        assert len(job.writes) == 2
        assert (job.stored["jobDeploymentStatus"], job.stored["startTime"]) == ("Initializing", started)
        await job.look("Running", jobStatus="RUNNING", startTime=started)
        assert (len(job.writes), job.stored["phase"], job.stored["jobDeploymentStatus"]) == (3, "Running", "Running")

    asyncio.run(scenario())


NOT_LEARNING = {"kind": "NotLearning", "message": "did not learn: validation accuracy 0.110 on 200 images ..."}


@pytest.mark.parametrize(("jds", "job_status", "head", "phase", "reason", "warnings"), [
    # spec.checks.learning.action Fail: the Failed transition's own Warning says it (once)
    ("Failed", "FAILED", "Failed", "Failed", "NotLearning", [("Warning", "NotLearning", "{message}")]),
    # Warn: the job succeeded, and a Warning Event says what it found beside the Normal one
    ("Complete", "SUCCEEDED", "Succeeded", "Succeeded", "Succeeded",
     [("Warning", "NotLearning", f"stage Head {NOT_LEARNING['message']}")]),
], ids=["fail", "warn"])
def test_a_stage_that_learned_nothing_is_said_in_the_status_and_a_warning_event(job, jds, job_status, head, phase,
                                                                                 reason, warnings):
    ledger = {"stages": [{"type": "FrozenFeatures", "state": "Succeeded"},
                         {"type": "Head", "state": head, "finding": NOT_LEARNING,
                          "message": NOT_LEARNING["message"] if head == "Failed" else None}],
              "stage": "Head", "progress": "1/2" if head == "Failed" else "2/2", "modelURI": None}

    async def scenario():
        await job.look("Running", jobStatus="RUNNING")
        job.reads.answer(ledgers.Outcome(ledger=RUNNING_LEDGER))
        await job.look("Running", jobStatus="RUNNING")
        await job.look(jds, jobStatus=job_status)
        job.reads.answer(ledgers.Outcome(ledger=ledger))
        await job.look(jds, jobStatus=job_status)
        done = job.stored
        assert (done["phase"], done["reason"]) == (phase, reason)
        assert {k: _cond(done, "Degraded").get(k) for k in ("status", "reason")} == {"status": "True",
                                                                                      "reason": "NotLearning"}
        assert done["stages"][1]["finding"] == NOT_LEARNING
        said = [(t, r, m.format(message=done["message"])) for t, r, m in warnings]
        assert [e for e in job.events if e[0] == "Warning"] == said
        await job.look(jds, jobStatus=job_status)  # nothing new: nothing said again
        assert [e for e in job.events if e[0] == "Warning"] == said

    asyncio.run(scenario())
