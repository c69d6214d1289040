"""The operator's concurrency on its own (`workqueue.py`): slots with an urgent line, the per-endpoint bulkhead, and
the delayed queue the mirror loop runs on. The ledger reads and the mirror loop that use them are tested in
test_ledgers.py and test_supervisor.py."""

from __future__ import annotations

import asyncio

import pytest

from graft_operator.workqueue import Bulkhead, DelayedQueue, Slots


def test_slots_are_not_lost_when_a_wait_is_given_up():
    async def scenario():
        slots = Slots(1)
        await slots.acquire()
        gives_up = asyncio.ensure_future(asyncio.wait_for(slots.acquire(), 0.05))
        waits = asyncio.ensure_future(slots.acquire(urgent=True))
        with pytest.raises(TimeoutError):
            await gives_up
        slots.release()
        await asyncio.wait_for(waits, 1)
        slots.release()
        assert slots.free == 1
        await asyncio.wait_for(slots.acquire(), 1)

    asyncio.run(scenario())


@pytest.mark.parametrize(("urgent", "promoted", "order"), [
    pytest.param((), (), ["a", "b", "c"], id="first-come-first-served"),
    pytest.param(("c",), (), ["c", "a", "b"], id="urgent-first"),
    pytest.param((), ("b",), ["b", "a", "c"], id="promoted-while-waiting"),
])
def test_slots_let_urgent_waiters_go_first(urgent, promoted, order):
    async def scenario():
        slots, got = Slots(1), []
        await slots.acquire()

        async def take(key):
            await slots.acquire(urgent=key in urgent, key=key)
            got.append(key)

        waits = []
        for key in "abc":
            waits.append(asyncio.ensure_future(take(key)))
            await asyncio.sleep(0)  # in line in this order
        for key in promoted:
            slots.promote(key)
        for _ in "abc":
            slots.release()
            await asyncio.sleep(0.01)
        await asyncio.gather(*waits)
        return got

    assert asyncio.run(scenario()) == order


def test_a_bulkhead_keeps_a_silent_endpoint_to_its_own_slots_and_gives_up_on_it_after_its_patience():
    async def scenario():
        bulkhead = Bulkhead(1)
        await bulkhead.enter("hung", "a", urgent=False, patience=0.05)  # its work never ends
        waiting = asyncio.ensure_future(bulkhead.enter("hung", "b", urgent=False, patience=0.05))
        await asyncio.sleep(0.01)
        assert bulkhead.queued("b")
        # Another endpoint is not held up by the hung one.
        await asyncio.wait_for(bulkhead.enter("fine", "c", urgent=False, patience=0.05), 0.02)
        await asyncio.wait({waiting}, timeout=1)
        assert waiting.done() and isinstance(waiting.exception(), TimeoutError)
        assert not bulkhead.queued("b")

    asyncio.run(scenario())


def test_a_bulkhead_wait_at_an_endpoint_that_answers_takes_its_turn_however_long():
    async def scenario():
        bulkhead = Bulkhead(1)
        await bulkhead.enter("busy", "a", urgent=False, patience=0.05)
        waiting = asyncio.ensure_future(bulkhead.enter("busy", "b", urgent=False, patience=0.05))
        for i in range(4):  # urgent work there keeps ending and the next starting: the endpoint answers
            urgent = asyncio.ensure_future(bulkhead.enter("busy", f"urgent-{i}", urgent=True, patience=0.05))
            await asyncio.sleep(0.03)
            bulkhead.leave("busy")  # hands its slot to the urgent wait
            await asyncio.wait_for(urgent, 0.1)
        assert not waiting.done()  # 0.12 s, more than twice its patience: still in line, not given up
        bulkhead.leave("busy")
        await asyncio.wait_for(waiting, 0.1)

    asyncio.run(scenario())


def _queue(plan, seen, concurrency=8, holdback=lambda t: 0.0):
    """A DelayedQueue whose handler records each look (and how many run at once) and returns the planned delays."""
    done: list[str] = []
    running = {"now": 0, "most": 0, "keys": set(), "twice": []}

    async def handle(key):
        seen.append(key)
        if key in running["keys"]:
            running["twice"].append(key)
        running["keys"].add(key)
        running["now"] += 1
        running["most"] = max(running["most"], running["now"])
        await asyncio.sleep(0.04)
        running["now"] -= 1
        running["keys"].discard(key)
        delays = plan[key]
        return delays.pop(0) if len(delays) > 1 else delays[0]

    def finished(key):
        done.append(key)
        queue.discard(key)

    queue = DelayedQueue(handle, finished, concurrency=concurrency, idle=30.0, holdback=holdback)
    return queue, done, running


def test_a_delayed_queue_handles_each_key_when_due_until_it_is_done():
    async def scenario():
        seen: list[str] = []
        queue, done, _ = _queue({"a": [0.05, 0.05, None], "b": [60.0]}, seen)
        queue.ensure_running()
        queue.wake("a")
        queue.wake("b")
        await asyncio.sleep(0.4)
        assert (seen.count("a"), seen.count("b"), done) == (3, 1, ["a"])
        assert "a" not in queue and "b" in queue
        queue.wake("b")  # woken long before it is due
        await asyncio.sleep(0.1)
        assert seen.count("b") == 2
        await queue.stop()

    asyncio.run(scenario())


def test_a_delayed_queue_runs_no_more_than_its_concurrency_at_once():
    async def scenario():
        seen: list[str] = []
        queue, done, running = _queue({k: [None] for k in "abcdef"}, seen, concurrency=2)
        queue.ensure_running()
        for key in "abcdef":
            queue.wake(key)
        await asyncio.sleep(0.4)
        assert running["most"] == 2 and sorted(done) == list("abcdef")
        await queue.stop()

    asyncio.run(scenario())


def test_a_key_woken_while_it_is_handled_is_handled_again_after_not_beside_it():
    async def scenario():
        seen: list[str] = []
        queue, done, running = _queue({"a": [None]}, seen)
        queue.ensure_running()
        queue.wake("a")
        await asyncio.sleep(0.01)
        queue.wake("a")  # its RayJob changed while it was looked at
        await asyncio.sleep(0.2)
        assert (seen, running["twice"], done) == (["a", "a"], [], ["a"])
        await queue.stop()

    asyncio.run(scenario())


def test_a_delayed_queue_holds_due_keys_back_while_told_to():
    async def scenario():
        seen: list[str] = []
        hold = {"seconds": 10.0}
        queue, _, _ = _queue({"a": [None]}, seen, holdback=lambda t: hold["seconds"])
        queue.ensure_running()
        queue.wake("a")
        await asyncio.sleep(0.1)
        assert seen == []
        hold["seconds"] = 0.0
        queue.poke()
        await asyncio.sleep(0.05)
        assert seen == ["a"]
        await queue.stop()

    asyncio.run(scenario())
