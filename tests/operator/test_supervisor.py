"""The mirror loop's scheduling: started jobs are followed, woken at once, re-checked when due, then let go."""

from __future__ import annotations

import asyncio

import pytest

from graft_operator import follow, memory, metrics, supervisor
from graft_operator.supervisor import Supervisor


def _body(uid, started=True, deleting=False):
    meta = {"uid": uid, "name": uid, "namespace": "ml"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"rayJobName": f"{uid}-x"} if started else {}}


@pytest.fixture()
def calls(monkeypatch):
    seen: list[str] = []
    plan: dict[str, list[float | None]] = {}

    async def fake_follow_once(mem, body, follower):
        uid = body["metadata"]["uid"]
        seen.append(uid)
        await asyncio.sleep(0.01)
        delays = plan.get(uid) or [None]
        return delays.pop(0) if len(delays) > 1 else delays[0]

    monkeypatch.setattr(follow, "follow_once", fake_follow_once)
    return seen, plan


def test_followed_until_done_rechecked_when_due_and_woken_at_once(calls):
    seen, plan = calls

    async def scenario():
        sup = Supervisor(memory.Memory(api=None))
        plan["a"] = [0.05, 0.05, None]  # running, running, finished
        plan["b"] = [60.0]  # e.g. suspended: nothing due for a minute
        sup.observe(_body("a"))
        sup.observe(_body("b"))
        sup.observe(_body("c", started=False))  # not started: the create handler owns it
        sup.created("c")  # ... and is done with it (it holds nothing back: see the test below)
        await asyncio.sleep(0.4)
        assert seen.count("a") == 3 and "a" not in sup.bodies  # done with it after None
        assert seen.count("b") == 1 and "c" not in seen
        sup.kick("b")  # its RayJob changed
        await asyncio.sleep(0.05)
        assert seen.count("b") == 2
        sup.observe(_body("b", deleting=True))
        assert "b" not in sup.bodies
        await sup.stop()

    asyncio.run(scenario())


def test_new_jobs_are_created_before_started_jobs_are_looked_at_while_many_wait(calls, monkeypatch):
    seen, plan = calls
    monkeypatch.setattr(supervisor, "CREATES_FIRST_SECONDS", 0.3)
    monkeypatch.setattr(supervisor, "CREATES_FIRST_BACKLOG", 2)

    async def scenario():
        sup = Supervisor(memory.Memory(api=None))
        plan["a"] = [60.0]  # running: next look in a minute unless woken
        sup.observe(_body("new1", started=False))  # their create handlers have not run yet
        sup.observe(_body("new2", started=False))
        sup.observe(_body("a"))
        await asyncio.sleep(0.1)
        assert seen == []  # a's look waits while many RayJobs are still to be created ...
        sup.created("new1")
        await asyncio.sleep(0.05)
        assert seen == ["a"]  # ... and happens as soon as few are: a short backlog holds nothing back
        sup.observe(_body("late", started=False))  # creates that do not come: a waits, but not for ever
        sup.kick("a")
        await asyncio.sleep(0.1)
        assert seen == ["a"]
        await asyncio.sleep(0.35)
        assert seen == ["a", "a"]
        await sup.stop()

    asyncio.run(scenario())


def test_a_wake_during_a_look_is_not_lost(calls):
    seen, plan = calls

    async def scenario():
        sup = Supervisor(memory.Memory(api=None))
        plan["a"] = [None]
        sup.observe(_body("a"))
        await asyncio.sleep(0.005)  # inside its first look
        sup.kick("a")
        await asyncio.sleep(0.1)
        assert seen.count("a") == 2  # looked again although the first look said "done"
        await sup.stop()

    asyncio.run(scenario())


def _errors() -> float:
    return metrics.RECONCILE_ERRORS.labels(handler="mirror")._value.get()


def test_a_job_whose_look_raises_is_logged_counted_and_looked_at_again_while_others_go_on(calls, monkeypatch,
                                                                                            caplog):
    seen, plan = calls
    original = follow.follow_once
    monkeypatch.setattr("graft_operator.supervisor.POLL_SECONDS", 0.05)

    async def flaky(mem, body, follower):
        if body["metadata"]["uid"] == "bad":
            seen.append("bad")
            raise RuntimeError("surprise")
        return await original(mem, body, follower)

    monkeypatch.setattr(follow, "follow_once", flaky)
    errors = _errors()

    async def scenario():
        sup = Supervisor(memory.Memory(api=None))
        plan["good"] = [0.02]  # a running job: looked at again and again
        sup.observe(_body("bad"))
        sup.observe(_body("good"))
        await asyncio.sleep(0.3)
        assert seen.count("good") >= 5  # the loop went on
        assert seen.count("bad") >= 2 and "bad" in sup.bodies  # retried after POLL_SECONDS, not dropped
        await sup.stop()

    asyncio.run(scenario())
    assert _errors() - errors >= 2  # graft_reconcile_errors_total{handler="mirror"}
    failures = [r for r in caplog.records if r.getMessage() == "following the job failed"]
    assert failures and failures[0].k8s_ref["uid"] == "bad" and failures[0].exc_info  # the job and the traceback
