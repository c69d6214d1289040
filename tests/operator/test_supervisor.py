"""The mirror loop's scheduling: started jobs are followed, woken at once, re-checked when due, then let go."""

from __future__ import annotations

import asyncio

import pytest
from graft.operator import reconcile


def _body(uid, started=True, deleting=False):
    meta = {"uid": uid, "name": uid, "namespace": "ml"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"rayJobName": f"{uid}-x"} if started else {}}


@pytest.fixture()
def calls(monkeypatch):
    seen: list[str] = []
    plan: dict[str, list[float | None]] = {}

    async def fake_follow_once(body, follower):
        uid = body["metadata"]["uid"]
        seen.append(uid)
        await asyncio.sleep(0.01)
        delays = plan.get(uid) or [None]
        return delays.pop(0) if len(delays) > 1 else delays[0]

    monkeypatch.setattr(reconcile, "follow_once", fake_follow_once)
    monkeypatch.setattr(reconcile, "_status", {})
    return seen, plan


def test_followed_until_done_rechecked_when_due_and_woken_at_once(calls):
    seen, plan = calls

    async def scenario():
        sup = reconcile.Supervisor()
        plan["a"] = [0.05, 0.05, None]  # running, running, finished
        plan["b"] = [60.0]  # e.g. suspended: nothing due for a minute
        sup.observe(_body("a"))
        sup.observe(_body("b"))
        sup.observe(_body("c", started=False))  # not started: the create handler owns it
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


def test_a_wake_during_a_look_is_not_lost(calls):
    seen, plan = calls

    async def scenario():
        sup = reconcile.Supervisor()
        plan["a"] = [None]
        sup.observe(_body("a"))
        await asyncio.sleep(0.005)  # inside its first look
        sup.kick("a")
        await asyncio.sleep(0.1)
        assert seen.count("a") == 2  # looked again although the first look said "done"
        await sup.stop()

    asyncio.run(scenario())


def test_one_failing_job_does_not_stop_the_loop(calls, monkeypatch):
    seen, _ = calls
    original = reconcile.follow_once

    async def flaky(body, follower):
        if body["metadata"]["uid"] == "bad":
            raise RuntimeError("surprise")
        return await original(body, follower)

    monkeypatch.setattr(reconcile, "follow_once", flaky)

    async def scenario():
        sup = reconcile.Supervisor()
        sup.observe(_body("bad"))
        sup.observe(_body("good"))
        await asyncio.sleep(0.1)
        assert "good" in seen
        await sup.stop()

    asyncio.run(scenario())
