"""The driver and the job lease (graft/lease.py), in-process (`LocalExecutor`) on the built-in digits: a driver
refused while another holds the job, one that lost the lease mid-stage stopping before its next ledger write (the
in-process session's epoch record), and a finished run leaving the lease released for the next."""

from __future__ import annotations

import json
import socket

import pytest
from support.trainer_data import NO_SERVING, SMOKE_CHECKS

from graft import lease, storage
from graft.api.models import StageState, TransferJob
from graft.ledger import Ledger
from graft_trainer.driver import Driver
from graft_trainer.executors import LocalExecutor

SPEC = {
    "model": {"backbone": "smallcnn", "numClasses": 10},
    "data": {"train": "builtin:digits-noisy", "imageSize": 8, "shotsPerClass": 2},
    "stages": [
        {"type": "Pretrain", "data": "builtin:digits-clean", "numClasses": 10, "epochs": 2, "batchSize": 128},
        {"type": "FrozenFeatures"},
        {"type": "Head", "epochs": 2},
    ],
    "checks": SMOKE_CHECKS,
    "serving": NO_SERVING,
}
OTHER = lease.Holder("node-7", 4242, "token-of-the-other-driver")


def _driver(store, **kw) -> Driver:
    doc = {"apiVersion": "graft.dev/v1alpha1", "kind": "TransferJob", "metadata": {"name": "digits"}, "spec": SPEC}
    return Driver(TransferJob.model_validate(json.loads(json.dumps(doc))), str(store), executor=LocalExecutor(), **kw)


def test_a_driver_refuses_a_job_another_driver_holds_and_writes_nothing(tmp_path):
    driver = _driver(tmp_path)
    lease.acquire(driver.root, "digits", OTHER)
    with pytest.raises(lease.LeaseHeld, match="held by host node-7 pid 4242"):
        driver.run()
    assert Ledger.load(driver.root) is None
    assert storage.read_json(lease.uri(driver.root))["holder"]["token"] == OTHER.token


def test_a_driver_that_lost_the_lease_mid_stage_stops_before_its_next_ledger_write(tmp_path, one_thread):
    driver = _driver(tmp_path)
    taken: dict[str, bytes] = {}

    def take_over_when_pretrain_starts(ledger: Ledger) -> None:
        if ledger.stage("Pretrain").state == StageState.RUNNING and not taken:
            lease.acquire(driver.root, "digits", OTHER, force=True)
            taken["ledger"] = storage.read_bytes(Ledger.uri(driver.root))

    driver.on_update = take_over_when_pretrain_starts
    with pytest.raises(lease.LeaseLost) as lost:
        driver.run()
    assert "taken over by host node-7 pid 4242" in str(lost.value)
    assert storage.read_bytes(Ledger.uri(driver.root)) == taken["ledger"]  # no epoch, no failure written over it
    record = storage.read_json(lease.uri(driver.root))
    assert record["holder"]["token"] == OTHER.token and not record["released"]


def test_a_finished_run_releases_the_lease_and_the_rerun_takes_it(tmp_path, one_thread):
    first = _driver(tmp_path)
    ledger = first.run()
    record = storage.read_json(lease.uri(first.root))
    assert record["released"] and record["attempt"] == ledger.attempt == 1
    assert record["holder"] == {"host": socket.gethostname(), "pid": first.holder.pid, "token": first.holder.token}
    assert _driver(tmp_path).run().attempt == 2


@pytest.fixture()
def finished_job(tmp_path, one_thread) -> tuple[str, str]:
    """A job run to its end (in-process): the entrypoint then runs no stage, only takes the lease and writes the
    ledger. Returns (the job as JSON, its root)."""
    driver = _driver(tmp_path)
    driver.run()
    doc = {"apiVersion": "graft.dev/v1alpha1", "kind": "TransferJob", "metadata": {"name": "digits"}, "spec": SPEC}
    return json.dumps(doc), driver.root


def test_the_entrypoint_waits_for_a_lease_its_holder_stopped_renewing_then_takes_it(finished_job, tmp_path):
    """A retried RayJob's new driver, the old one lost with its node: its lease runs out, the new driver goes on."""
    from graft_trainer.__main__ import main

    job, root = finished_job
    lease.acquire(root, "digits", OTHER, ttl=2.0)  # never renewed: expires in 2 s
    assert main(["--job", job, "--storage", str(tmp_path), "--lease-wait", "30"]) == 0
    assert storage.read_json(lease.uri(root))["released"]
    assert Ledger.load(root).attempt == 2


def test_the_entrypoint_fails_with_the_line_when_the_holder_keeps_renewing(finished_job, tmp_path, capsys):
    from graft_trainer.__main__ import main

    job, root = finished_job
    held = lease.acquire(root, "digits", OTHER)
    before = storage.read_bytes(Ledger.uri(root))
    with held.renewing(every=0.3):
        code = main(["--job", job, "--storage", str(tmp_path), "--lease-wait", "2"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: job 'digits' is already running") and "held by host node-7 pid 4242" in err
    assert len(err.splitlines()) == 1
    assert storage.read_bytes(Ledger.uri(root)) == before
