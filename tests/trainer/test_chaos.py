"""A kill storm: the driver of a small LP-FT job (Pretrain, FrozenFeatures, Head, FullFineTune on 2 Ray Train workers)
is killed again and again at moments spread over its stages, on moto S3 and on local storage, and rerun each time,
as Kubernetes does to a RayJob's submitter on preemption, eviction or node drain.

Kills, in turn: SIGTERM to the driver (what the kubelet sends first), SIGKILL to the driver's whole process group
(the grace period ran out: driver and its Ray die together), SIGKILL to one Ray Train worker (a worker pod lost;
Ray Train restarts the worker group, `FailureConfig.max_failures`: once the new group has reported an epoch, the same
driver goes on to the next kill, as a job does after a lost worker). After every kill: the ledger is whole JSON; a
SIGTERMed driver said where it resumes and exited 143 (never SIGABRT); no stage that had finished is run again.
The job always ends with a model.

Also: the demo job (fewer epochs) on S3 behind an endpoint that answers 30% of requests with 503 and resets 5% of
connections.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from support.driver_proc import DriverProcess, ray_train_workers
from support.flaky_s3 import flaky_s3
from support.trainer_data import NO_SERVING, SMOKE_CHECKS, job_doc, write_job

from graft import storage
from graft.api.models import StageState
from graft.ledger import Ledger

pytestmark = pytest.mark.slow
#: Where each kill lands, in turn, and how: (stage, epoch) reached or passed in the ledger, then the kill. A rerun
#: skips what is done, so the storm walks through every stage whatever the machine's speed. SIGKILL of a worker needs
#: a Ray Train worker group (Pretrain, FullFineTune).
STORM = (
    (("Pretrain", 0), "sigterm"),  # Ray and the first worker group starting
    (("Pretrain", 1), "sigkill-driver"),
    (("Pretrain", 2), "sigkill-worker"),
    (("FrozenFeatures", 0), "sigterm"),
    (("Head", 0), "sigkill-driver"),
    (("FullFineTune", 0), "sigterm"),
    (("FullFineTune", 1), "sigkill-worker"),
    (("FullFineTune", 2), "sigterm"),
    (("FullFineTune", 3), "sigkill-driver"),
    (("FullFineTune", 3), "sigterm"),
)
KILLS = len(STORM)  # per storage backend: 20 in all
ORDER = ["Pretrain", "FrozenFeatures", "Head", "FullFineTune"]
#: How Ray prefixes what its own processes print when it forwards it to the driver: "(RayTrainWorker pid=1) ...".
_RAY_PREFIX = re.compile(r"^(\x1b\[\d+m)?\(\S+ pid=\d+(, ip=\S+)?\)")

SPEC = {
    "model": {"backbone": "smallcnn", "numClasses": 10},
    "data": {"train": "builtin:digits-noisy", "imageSize": 8, "shotsPerClass": 5, "testFraction": 0.2},
    "stages": [
        {"type": "Pretrain", "data": "builtin:digits-clean", "numClasses": 10, "epochs": 4, "batchSize": 64,
         "lr": 0.05},
        {"type": "FrozenFeatures"},
        {"type": "Head", "epochs": 30},
        {"type": "FullFineTune", "epochs": 4, "batchSize": 16, "lr": 0.003, "augment": False},
    ],
    "workers": {"replicas": 2, "cpus": "1"},
    "checks": SMOKE_CHECKS,
    "serving": NO_SERVING,
}


class LedgerWatch:
    """Reads the ledger every 0.2 s while a driver runs: every version seen must be whole JSON."""

    def __init__(self, root: str):
        self.root, self.reads, self.bad = root, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                data = storage.read_bytes(Ledger.uri(self.root))
            except FileNotFoundError:
                continue
            self.reads += 1
            try:
                json.loads(data)
            except ValueError:
                self.bad.append(f"{len(data)} bytes: {data[:60]!r}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _finished(root: str) -> dict[str, tuple[str | None, str | None]]:
    """Finished stages -> (end time, output): a stage run again would change both."""
    ledger = Ledger.load(root)
    if ledger is None:
        return {}
    return {s.type: (s.end_time, s.output) for s in ledger.stages if s.state == StageState.SUCCEEDED}


def _kill(driver: DriverProcess, kind: str) -> str:
    """Kill as `kind` says; returns what was killed (a worker kill falls back to the driver's SIGTERM when no
    training worker is up at that moment, e.g. during FrozenFeatures or the in-driver Head sweep)."""
    if kind == "sigkill-worker":
        workers = sorted(ray_train_workers(driver.ray_tmp))
        if workers:
            os.kill(workers[0], signal.SIGKILL)
            return "sigkill-worker"
        kind = "sigterm"
    if kind == "sigterm":
        os.kill(driver.proc.pid, signal.SIGTERM)  # the driver only, as the kubelet signals a container's process
    else:
        os.killpg(driver.proc.pid, signal.SIGKILL)
    return kind


def _attempt(root: str) -> int:
    ledger = Ledger.load(root)
    return ledger.attempt if ledger else 0


def _reached(root: str, target: tuple[str, int], attempt: int) -> bool:
    """Whether this attempt (a driver started after the ledger recorded `attempt`) is at or past `target`: a later
    stage running, or the stage at that epoch."""
    try:
        ledger = Ledger.load(root)
    except Exception:
        return False
    if ledger is None or ledger.current is None or ledger.attempt <= attempt or ledger.done:
        return False
    stage, epoch = target
    current = ledger.current
    at, wanted = ORDER.index(current.type), ORDER.index(stage)
    return at > wanted or (at == wanted and current.state == StageState.RUNNING and current.epoch >= epoch)


def _recovered(driver: DriverProcess, root: str, stage: str, old: set[int]) -> None:
    """Wait until a new worker group (none of the `old` group's processes) has reported an epoch past the one the
    ledger had when it came up, or the stage has ended. The epoch at the kill is no mark: the old group's rank 0 may
    report one more after the kill, and the ledger may have moved on between reading it and the kill."""
    deadline, epoch = time.monotonic() + 240, None
    while time.monotonic() < deadline and driver.proc.poll() is None:
        rec = Ledger.load(root).stage(stage)
        if rec.state != StageState.RUNNING or (epoch is not None and rec.epoch > epoch):
            return
        # Ray Train shuts the old group down before it starts the next
        if epoch is None and ray_train_workers(driver.ray_tmp) - old:
            epoch = rec.epoch
        time.sleep(0.1)
    raise AssertionError(f"no new worker group of {stage} reported an epoch after a worker was killed (new group "
                         f"seen at epoch {epoch}):\n{driver.output()[-3000:]}")


class _Run:
    """One driver of the storm, from its start to its exit, with what was finished before it and its ledger watch."""

    def __init__(self, cmd: list[str], tmp_path: Path, env: dict[str, str], root: str):
        self.before, self.attempt = _finished(root), _attempt(root)
        self.watch = LedgerWatch(root)
        self.driver = DriverProcess(cmd, tmp_path, env)
        self.started = time.monotonic()

    def reach(self, root: str, target: tuple[str, int]) -> bool:
        """Wait until this driver is at or past `target`, or has exited (300 s at most)."""
        deadline = time.monotonic() + 300
        while (not _reached(root, target, self.attempt) and self.driver.proc.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.1)
        return _reached(root, target, self.attempt)

    def end(self) -> None:
        self.watch.stop()
        self.driver.kill()


def _check_exit(n: int, run: _Run, root: str, done: str, code: int) -> None:
    """What must hold once a killed driver has exited: a whole ledger throughout, no SIGABRT, a SIGTERM's exit 143
    with its line and no traceback of ours, no finished stage run again."""
    out = run.driver.output()
    assert not run.watch.bad, f"kill {n} ({done}): the ledger was read damaged: {run.watch.bad}"
    assert code not in (-signal.SIGABRT, 128 + signal.SIGABRT), f"kill {n}: SIGABRT\n{out[-3000:]}"
    if done.endswith("sigterm") and code != 0:
        assert code == 143, f"kill {n}: SIGTERM gave exit {code}\n{out[-3000:]}"
        own = [line for line in out.splitlines() if not _RAY_PREFIX.match(line)]  # not Ray's processes' output
        assert "stopped by SIGTERM" in out and not any("Traceback" in line for line in own), out[-3000:]
    after = _finished(root)
    redone = [t for t, v in run.before.items() if after.get(t) != v]
    assert not redone, f"kill {n}: finished stages {redone} were run again ({run.before} -> {after})"


def _storm(tmp_path: Path, job_storage: dict, root: str, env: dict[str, str]) -> list[str]:
    job = write_job(tmp_path / "job.json", job_doc("chaos", {**SPEC, "storage": job_storage}, uid="chaos-uid"))
    cmd = [sys.executable, "-m", "graft_trainer", "--job", str(job)]
    log: list[str] = []
    run: _Run | None = None
    for n, (target, kind) in enumerate(STORM, 1):
        run = run or _Run(cmd, tmp_path, env, root)
        going_on = False
        try:
            reached = run.reach(root, target)
            if run.driver.proc.poll() is not None:  # finished before this kill: the storm is over early
                log.append(f"kill {n}: the job had finished (exit {run.driver.proc.returncode})")
                assert run.driver.proc.returncode == 0, \
                    f"kill {n}: the driver exited {run.driver.proc.returncode} before it\n{run.driver.output()[-3000:]}"
                break
            assert reached, f"kill {n}: {target} not reached in 300 s"
            stage, at = Ledger.load(root).current, time.monotonic() - run.started
            group = ray_train_workers(run.driver.ray_tmp)
            done = _kill(run.driver, kind)
            killed = time.monotonic()
            if done == "sigkill-worker":  # Ray Train replaces the worker group and goes on: once it has, the same
                _recovered(run.driver, root, stage.type, group)  # driver goes on to the next kill
                log.append(f"kill {n}: {done} during {stage.type} epoch {stage.epoch} ({at:.1f} s after the driver "
                           f"started), a new worker group went on {time.monotonic() - killed:.1f} s later")
                if n < KILLS:
                    going_on = True
                    continue
                done += " + " + _kill(run.driver, "sigterm")
                killed = time.monotonic()
            code = run.driver.wait(180)
        finally:
            if not going_on:
                run.end()
        log.append(f"kill {n}: {done} during {stage.type} epoch {stage.epoch} ({at:.1f} s after the driver started), "
                   f"exit {code} {time.monotonic() - killed:.1f} s later, {run.watch.reads} ledger reads")
        _check_exit(n, run, root, done, code)
        run = None
    final = DriverProcess(cmd, tmp_path, env)
    code = final.wait(400)
    assert code == 0, final.output()[-3000:]
    ledger = Ledger.load(root)
    assert ledger.done and ledger.model_uri, ledger
    assert storage.exists(storage.join(ledger.model_uri, "model.pt"))
    return log


def test_kill_storm_on_local_storage(tmp_path):
    log = _storm(tmp_path, {"uri": str(tmp_path / "store")}, str(tmp_path / "store" / "chaos-uid"), dict(os.environ))
    print("\n".join(log))


def test_kill_storm_on_s3(tmp_path, s3_bucket, s3_endpoint):
    log = _storm(tmp_path, {"uri": f"{s3_bucket}/jobs", "endpoint": s3_endpoint}, f"{s3_bucket}/jobs/chaos-uid",
                 dict(os.environ))
    print("\n".join(log))


#: The demo's stages with fewer epochs: each epoch's storage traffic (the ledger's writes, a checkpoint, the metrics)
#: is the same as every other's, so the demo's 15 + 100 + 20 epochs only repeated it (~3500 requests, ~2 min on 2
#: cores); these still make hundreds of requests, every kind of write and read in every stage. Head checkpoints
#: every tenth of its epochs (graft_trainer/sweep.py), at least every epoch: 10 checkpoints at 10 epochs or 100.
FLAKY_EPOCHS = {"Pretrain": 3, "Head": 3, "FullFineTune": 3}


def test_the_demo_on_s3_through_a_flaky_endpoint_finishes(tmp_path, s3_bucket, s3_endpoint):
    """The README's demo job, as it is but for fewer epochs per stage (FLAKY_EPOCHS), with its storage on S3 behind
    a proxy that answers 30% of requests with 503 and resets 5% of connections (support/flaky_s3.py): every stage's
    writes and reads, the driver's and the Ray workers', retried until the job finishes with a model."""
    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "digits-lpft.yaml").read_text())
    for stage in doc["spec"]["stages"]:
        if stage["type"] in FLAKY_EPOCHS:
            stage["epochs"] = FLAKY_EPOCHS[stage["type"]]
    with flaky_s3(s3_endpoint, fail=0.3, reset=0.05, seed=7) as proxy:
        doc["spec"]["storage"] = {"uri": f"{s3_bucket}/runs", "endpoint": proxy.url}
        job = tmp_path / "demo.yaml"
        job.write_text(yaml.safe_dump(doc))
        env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}  # the endpoint is the spec's
        driver = DriverProcess([sys.executable, "-m", "graft_trainer", "--job", str(job)], tmp_path, env)
        code = driver.wait(900)
    assert code == 0, driver.output()[-3000:]
    ledger = Ledger.load(f"{s3_bucket}/runs/digits-lpft")
    assert ledger.done and ledger.model_uri
    assert proxy.failed >= 20, f"only {proxy.failed} of {proxy.requests} requests were answered 503"
    print(f"\n{proxy.requests} requests, {proxy.failed} answered 503, {proxy.reset} reset")
