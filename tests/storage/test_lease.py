"""The job lease (graft/lease.py) on a local folder and on a real S3 protocol server (moto on 127.0.0.1): one
holder at a time, the refusal line, takeover after expiry, release, a dead process or --force-takeover, and a writer
that lost the lease stopped before it writes the ledger."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from graft import lease, leasestore, storage
from graft.ledger import Ledger

ELSEWHERE = lease.Holder("node-7", 4242, "token-of-the-other-driver")


@pytest.fixture(params=["local", "s3", "gs"])
def root(request, tmp_path):
    """A job root on each store: local (flock), moto S3 (conditional writes), fake-gcs-server (read-back writes:
    graft/leasestore.py ReadBackStore)."""
    if request.param == "local":
        return str(tmp_path / "store" / "job-uid")
    return request.getfixturevalue({"s3": "s3_bucket", "gs": "gcs_bucket"}[request.param]) + "/runs/job-uid"


def _record(root: str) -> dict:
    return storage.read_json(lease.uri(root))


def test_a_second_driver_is_refused_with_one_line_naming_the_holder_and_the_ways_out(root):
    first = lease.acquire(root, "digits", ELSEWHERE, attempt=3)
    with pytest.raises(lease.LeaseHeld) as refused:
        lease.acquire(root, "digits")
    line = str(refused.value)
    record = _record(root)
    assert "\n" not in line
    assert f"job 'digits' is already running: its lease {lease.uri(root)} is held by host node-7 pid 4242" in line
    assert f"since {record['acquired_at']} (attempt 3), expiring {record['expires_at']} unless renewed" in line
    assert "wait for that run to end or its lease to expire, or take it over with --force-takeover" in line
    assert record["holder"] == {"host": "node-7", "pid": 4242, "token": first.holder.token}


@pytest.mark.parametrize("end", ["expired", "released"])
def test_a_lease_that_expired_or_was_released_is_taken_over(root, end):
    old = lease.acquire(root, "digits", ELSEWHERE, ttl=0.0 if end == "expired" else lease.TTL_S)
    if end == "released":
        old.release()
    new = lease.acquire(root, "digits")
    assert _record(root)["holder"]["token"] == new.holder.token
    with pytest.raises(lease.LeaseLost, match="taken over by host"):
        old.renew()


def test_a_holder_whose_process_is_gone_from_this_host_is_taken_over_at_once(root):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = lease.Holder(socket.gethostname(), int(gone.stdout), "token-of-a-killed-driver")
    lease.acquire(root, "digits", dead)
    lease.acquire(root, "digits")  # no wait, no force


def test_a_holder_whose_process_lives_on_this_host_is_not_taken_over(root):
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as alive:
        try:
            lease.acquire(root, "digits", lease.Holder(socket.gethostname(), alive.pid, "token-of-a-live-driver"))
            with pytest.raises(lease.LeaseHeld, match=f"pid {alive.pid}"):
                lease.acquire(root, "digits")
        finally:
            alive.kill()


def test_force_takeover_stops_the_old_writer_before_it_writes_the_ledger(root):
    old = lease.acquire(root, "digits", ELSEWHERE)
    ledger = Ledger.create("job-uid", "digits", ["Head"])
    ledger.save(root, old.holder)
    new = lease.acquire(root, "digits", force=True)
    ledger.attempt = 2
    ledger.save(root, new.holder)
    before = storage.read_bytes(Ledger.uri(root))

    ledger.attempt = 1
    with pytest.raises(lease.LeaseLost) as lost:
        ledger.save(root, old.holder)
    assert f"taken over by host {socket.gethostname()} pid {new.holder.pid}" in str(lost.value)
    assert "no longer holds the job's lease" in str(lost.value) and "stopped without writing" in str(lost.value)
    assert storage.read_bytes(Ledger.uri(root)) == before
    old.release()  # a lost lease is left to its new holder
    assert _record(root)["holder"]["token"] == new.holder.token and not _record(root)["released"]


def test_the_renewal_thread_extends_the_lease_and_notices_a_takeover(root):
    held = lease.acquire(root, "digits", ELSEWHERE, ttl=5.0)
    first = storage.read_bytes(lease.uri(root))
    with held.renewing(every=0.2):
        deadline = time.monotonic() + 10
        while storage.read_bytes(lease.uri(root)) == first and time.monotonic() < deadline:
            time.sleep(0.1)
        assert storage.read_bytes(lease.uri(root)) != first, "never renewed"
        lease.acquire(root, "digits", force=True)
        while held.lost is None and time.monotonic() < deadline:
            time.sleep(0.1)
    assert held.lost is not None and "taken over by host" in held.lost


@pytest.mark.parametrize("before", ["no lease", "an expired lease"])
def test_of_drivers_starting_together_exactly_one_gets_the_lease(tmp_path, before):
    """Local storage (flock): eight drivers at once. Not on moto, whose conditional check and write are not under
    one lock (moto/s3/responses.py put_object), unlike AWS S3 and MinIO."""
    root = str(tmp_path / "job-uid")
    if before == "an expired lease":
        lease.acquire(root, "digits", ELSEWHERE, ttl=0.0)
    results: list[str] = []
    start = threading.Barrier(8)

    def one() -> None:
        start.wait()
        try:
            lease.acquire(root, "digits")
            results.append("held")
        except lease.LeaseHeld:
            results.append("refused")

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["held"] + ["refused"] * 7


@pytest.fixture()
def store_ignoring_conditions(s3_bucket, monkeypatch):
    """A client whose conditional headers never reach the server: from the client's side, a store that ignores
    them (an S3 endpoint answers a write it does not check exactly as moto answers an unconditional one)."""
    import boto3

    client = boto3.client("s3")

    def strip(request, **_):
        for header in ("If-Match", "If-None-Match"):
            request.headers.pop(header, None)

    client.meta.events.register("before-send.s3.PutObject", strip)
    monkeypatch.setattr(leasestore, "s3_client", lambda _options: client)
    monkeypatch.setattr(leasestore, "_CONDITIONAL", {})
    return s3_bucket + "/runs/job-uid"


def test_a_store_that_ignores_conditional_writes_is_found_and_a_lost_lease_still_noticed(store_ignoring_conditions,
                                                                                          caplog):
    root = store_ignoring_conditions
    old = lease.acquire(root, "digits", ELSEWHERE)
    assert "ignores conditional writes" in caplog.text
    assert leasestore._CONDITIONAL == {storage.env_s3_options().endpoint: False}
    with pytest.raises(lease.LeaseHeld):
        lease.acquire(root, "digits")
    new = lease.acquire(root, "digits", force=True)
    with pytest.raises(lease.LeaseLost):
        old.renew()
    assert json.loads(storage.read_bytes(lease.uri(root)))["holder"]["token"] == new.holder.token


def test_moto_honours_if_none_match_and_if_match_on_put_object(s3_bucket):
    """What the module docstring says of moto 5.2.5, checked: the probe finds conditional writes honoured, and a
    create over an existing lease or a renewal with a stale ETag gets 412."""
    from botocore.exceptions import ClientError

    root = s3_bucket + "/runs/job-uid"
    lease.acquire(root, "digits")
    assert leasestore._CONDITIONAL[storage.env_s3_options().endpoint] is True
    client = leasestore.s3_client(storage.env_s3_options())
    bucket, _, key = lease.uri(root)[len("s3://"):].partition("/")
    for condition in ({"IfNoneMatch": "*"}, {"IfMatch": '"0123456789abcdef0123456789abcdef"'}):
        with pytest.raises(ClientError, match="PreconditionFailed"):
            client.put_object(Bucket=bucket, Key=key, Body=b"{}", **condition)


def test_a_waiting_driver_takes_a_lease_that_stopped_changing_whatever_its_holders_clock_says(root):
    """The holder's clock runs an hour ahead (its expiry is far off), but it has not renewed for a TTL of the
    waiting driver's own time: gone."""
    lease.acquire(root, "digits", ELSEWHERE, ttl=1.0)
    record = _record(root)
    record["expires_at"] = "2999-01-01T00:00:00Z"
    storage.write_json(lease.uri(root), record)
    with pytest.raises(lease.LeaseHeld):
        lease.acquire(root, "digits")
    lease.acquire(root, "digits", wait=20)


@pytest.mark.parametrize("damage", [b"", b'{"holder": {"host": "node-7"', b"[1, 2]", b'{"holder": null}'],
                         ids=["empty", "truncated", "not-an-object", "no-holder"])
def test_a_damaged_lease_is_taken_over_and_stops_no_one_with_a_traceback(root, damage):
    storage.write_bytes(lease.uri(root), damage)
    with pytest.raises(lease.LeaseLost, match="no longer holds the job's lease"):
        lease.check(root, ELSEWHERE)
    held = lease.acquire(root, "digits")
    lease.check(root, held.holder)
