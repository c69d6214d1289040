"""A hung S3 endpoint next to healthy jobs: status never waits on storage (issue 10).

The real `graft operator` process against the emulated API server, and the fake KubeRay in no-training mode
(a RayJob goes Initializing -> Running at once and Complete after RUN_SECONDS). The hung jobs' storage is an
endpoint on 127.0.0.1 that accepts connections and never answers (support/s3.py); the healthy jobs' is `file://`.

Times come from the API server's own change feed. Every bound is relative to a baseline measured in the same run
with no hung job, so that a loaded CI machine moves both sides: before the fix a hung ledger read held a job's
status for about 90 s (3 attempts x 30 s) and, with 8 of them, every other job's too.
"""

from __future__ import annotations

import time
from typing import Any

import kubernetes
import pytest
from support.change_feed import LABEL, ChangeFeed
from support.committed import COMMITTED_CRD
from support.fake_kuberay import FakeKubeRay
from support.kube import emulated_api
from support.operator_proc import OperatorProcess
from support.s3 import TEST_CREDENTIALS, hung_endpoint
from support.trainer_data import SMOKE_CHECKS

pytestmark = pytest.mark.slow

NS = "graft-hung"
G, V, P = "graft.dev", "v1alpha1", "transferjobs"
RUN_SECONDS = 25.0  # how long each fake RayJob runs: the hung jobs are still Running while the others are measured
SLACK = 1.0  # what hung jobs may add to a healthy job's RayJob transition reaching its TransferJob
# What a hung endpoint may add to the operator's part of its own job's Created=True (`Feed.created_by_operator`):
# less than LEDGER_TIMEOUT, so that a create or first status write that waited for the hung read still fails.
CREATED_SLACK = 2.0
BURST_SLACK = 5.0  # the same for 7 jobs created back to back (on a loaded 2-core machine)
WAIT = 20.0  # how long any single fact is waited for (the unfixed operator needed about 90 s)
LEDGER_TIMEOUT = 3  # the operator's --ledger-timeout here (default 5)


class Feed(ChangeFeed):
    """The change feed, failing the test when a fact does not come."""

    def __init__(self) -> None:
        super().__init__(NS)

    def __call__(self, t: float, kind: str, rt: Any, obj: dict[str, Any]) -> None:
        super().__call__(t, kind, rt, obj)
        name = ((obj.get("metadata") or {}).get("labels") or {}).get(LABEL)
        if rt.plural == "rayjobs" and kind == "ADDED" and name and obj["metadata"].get("namespace") == NS:
            with self.lock:  # the RayJob has no status yet: the base class records only its states
                self.first.setdefault((name, "rayjob created"), t)

    def expect(self, name: str, *facts: str, timeout: float = WAIT) -> None:
        if self.wait(name, *facts, timeout=timeout) is None:
            raise AssertionError(f"{name}: not all of {facts} within {timeout} s; seen: {self.seen(name)}")

    def latency(self, name: str, start: str, end: str) -> float:
        seconds = self.between(name, start, end)
        assert seconds is not None, f"{name}: {start!r} or {end!r} never seen; seen: {self.seen(name)}"
        return seconds

    def created_by_operator(self, name: str) -> float:
        """Seconds from a job's creation to its Created=True that were the operator's: all of them but the wait for
        KubeRay's first status of the RayJob. The operator's first status write waits for that status, up to
        `follow.FIRST_STATUS_WAIT` (2 s), to say both in one write; the fake KubeRay answering it runs in this test
        process, as late as a loaded machine makes it. Counted, that wait alone (0-2 s, whatever the storage) used
        up the slack: a hung job took 2.4 s against a 0.16 s baseline, about the whole wait plus the create. Under
        load average 70 the fake KubeRay took 0.4-6.8 s to pick up a new RayJob, and the operator wrote Created=True
        without it for 3 of 8 hung jobs."""
        rayjob, created = self.latency(name, "added", "rayjob created"), self.latency(name, "added", "Created True")
        first = self.between(name, "added", "rayjob Initializing")
        # Created=True comes with KubeRay's first status, or without it once the wait is over.
        kuberay = min(created, first if first is not None else created) - rayjob
        return created - max(kuberay, 0.0)


class Jobs:
    def __init__(self, api, feed: Feed, storage: str, hung_url: str):
        self.client = api.client()
        self.co = kubernetes.client.CustomObjectsApi(self.client)
        self.feed, self.storage, self.hung_url = feed, storage, hung_url

    def create(self, name: str, hung: bool) -> None:
        storage: dict[str, Any] = {"uri": self.storage}
        if hung:
            storage = {"uri": "s3://graft-hung/jobs", "endpoint": self.hung_url, "region": "us-east-1",
                       "credentialsSecret": {"name": "s3-credentials", "accessKeyIdKey": "access-key",
                                             "secretAccessKeyKey": "secret-key"}}
        spec = {
            "model": {"backbone": "smallcnn", "numClasses": 10, "weights": f"{storage['uri']}/weights.pt"},
            "data": {"train": "builtin:digits", "imageSize": 8},
            "stages": [{"type": "FrozenFeatures"}, {"type": "Head", "epochs": 1}],
            "checks": SMOKE_CHECKS,
            "storage": storage,
        }
        self.co.create_namespaced_custom_object(G, V, NS, P, {"apiVersion": f"{G}/{V}", "kind": "TransferJob",
                                                              "metadata": {"name": name}, "spec": spec})

    def healthy_transition(self, name: str) -> float:
        """Create a healthy job and return how long its RayJob's Running took to reach its TransferJob."""
        self.create(name, hung=False)
        self.feed.expect(name, "rayjob Running", "Running True")
        return self.feed.latency(name, "rayjob Running", "Running True")

    def status(self, name: str) -> dict[str, Any]:
        return self.co.get_namespaced_custom_object(G, V, NS, P, name).get("status") or {}

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        return next((c for c in self.status(name).get("conditions") or [] if c["type"] == type_), None)


def _ms(values: list[float]) -> str:
    return "[" + ", ".join(f"{v * 1000:.0f} ms" for v in values) + "]"


def test_hung_storage_delays_neither_its_jobs_conditions_nor_other_jobs(tmp_path):
    with hung_endpoint() as hung, emulated_api(namespaces=[NS]) as api:
        feed = Feed()
        api.store.listeners.append(feed)
        api.apply_crd(COMMITTED_CRD)
        jobs = Jobs(api, feed, f"file://{tmp_path}/storage", hung.url)
        kubernetes.client.CoreV1Api(jobs.client).create_namespaced_secret(NS, {
            "metadata": {"name": "s3-credentials"},
            "stringData": {"access-key": TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                           "secret-key": TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}})
        op = OperatorProcess(api, NS, tmp_path / "operator", metrics=False,
                             args=("--ledger-timeout", str(LEDGER_TIMEOUT))).start()
        kuberay = FakeKubeRay(api, NS, tmp_path / "kuberay", training=False, run_seconds=RUN_SECONDS,
                              pods=False).start()
        try:
            # Baseline: healthy jobs one at a time, no hung job anywhere.
            baseline = [jobs.healthy_transition(f"healthy-{i}") for i in range(3)]
            created_baseline = [feed.created_by_operator(f"healthy-{i}") for i in range(3)]

            # One hung job, its first ledger read in flight: its own conditions must not wait for its storage, nor
            # the healthy jobs' for theirs. Its first read starts when its RayJob runs (none while it starts), and it
            # is read again every few seconds while it runs: the healthy jobs are measured from then on. Not sooner:
            # the fake KubeRay and the API server run in this process, and their work for a new job (a RayCluster,
            # status writes) delayed a healthy job's transitions by seconds on a loaded machine, whatever the storage.
            jobs.create("hung-0", hung=True)
            feed.expect("hung-0", "rayjob Running")
            with_one = [jobs.healthy_transition(f"one-{i}") for i in range(3)]
            feed.expect("hung-0", "Created True", "Running True")

            # Eight hung jobs: more hung reads than Python's default thread pool has threads on 2 cores (6).
            for i in range(1, 8):
                jobs.create(f"hung-{i}", hung=True)
            for i in range(1, 8):
                feed.expect(f"hung-{i}", "rayjob Running")
            with_eight = [jobs.healthy_transition(f"eight-{i}") for i in range(3)]
            for i in range(1, 8):
                feed.expect(f"hung-{i}", "Created True")
            assert hung.accepted >= 2, "the hung jobs' ledger reads never reached the hung endpoint"
            created_hung = [feed.created_by_operator(f"hung-{i}") for i in range(8)]

            figures = (f"healthy RayJob Running -> TransferJob Running: baseline {_ms(baseline)}, with 1 hung job "
                       f"{_ms(with_one)}, with 8 {_ms(with_eight)}; Created (the operator's part): healthy "
                       f"{_ms(created_baseline)}, "
                       f"hung {_ms(created_hung)}")
            print(figures)
            assert created_hung[0] <= max(created_baseline) + CREATED_SLACK, figures
            assert max(created_hung) <= max(created_baseline) + BURST_SLACK, figures  # 7 created back to back
            assert max(with_one) <= max(baseline) + SLACK, figures
            assert max(with_eight) <= max(baseline) + SLACK, figures

            # The hung job's status says why its progress is stale while it runs, once, and does not flap.
            first = _wait_for(lambda: _false(jobs.condition("hung-0", "LedgerReadable")), "hung-0 LedgerReadable")
            assert first["reason"] == "LedgerTimeout", first
            assert f"could not be read within {LEDGER_TIMEOUT} s" in first["message"], first
            feed.expect("hung-0", "rayjob Complete", "Succeeded True", timeout=RUN_SECONDS + WAIT)
            assert feed.latency("hung-0", "LedgerReadable False", "rayjob Complete") > 0, "said only once finished"
            done = jobs.status("hung-0")
            last = next(c for c in done["conditions"] if c["type"] == "LedgerReadable")
            assert last == first, f"LedgerReadable changed while the endpoint stayed hung: {first} -> {last}"
            assert "no ledger was read" in done["message"], done
            # Its reads were failing already: its finish is written at once, like any other transition.
            assert feed.latency("hung-0", "rayjob Complete", "Succeeded True") <= max(baseline) + SLACK, figures
        finally:
            kuberay.stop()
            op.stop()
            jobs.client.close()


def _false(c: dict[str, Any] | None) -> dict[str, Any] | None:
    return c if c and c["status"] == "False" else None


def _wait_for(fn, what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = fn()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
