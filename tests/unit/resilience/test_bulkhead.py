from __future__ import annotations

import asyncio
import random

import pytest

from gateway.resilience.bulkhead import Bulkhead, InFlightCaps


def make(limit: int = 1, max_waiters: int = 10, wait_timeout_s: float = 5.0) -> Bulkhead:
    return Bulkhead("openai", limit, max_waiters=max_waiters, wait_timeout_s=wait_timeout_s)


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


# -- Bulkhead --------------------------------------------------------------------------------


def test_fast_path_completes_without_suspending() -> None:
    bulkhead = make(limit=2)
    for expected in (1, 2):
        coro = bulkhead.acquire()
        # No event loop runs here: a coroutine that awaited anything could not finish on its first step.
        with pytest.raises(StopIteration) as done:
            coro.send(None)
        assert done.value.value is True and bulkhead.in_flight == expected
    assert bulkhead.waiting == 0


def test_try_acquire_takes_free_slots_only() -> None:
    bulkhead = make(limit=1)
    assert bulkhead.try_acquire() is True
    assert bulkhead.try_acquire() is False
    assert bulkhead.rejected == 0  # only acquire() counts refusals
    bulkhead.release()
    assert bulkhead.in_flight == 0


async def test_full_without_waiting_room_rejects_at_once() -> None:
    bulkhead = make(limit=1, max_waiters=0)
    assert await bulkhead.acquire()
    assert await bulkhead.acquire() is False
    assert (bulkhead.rejected, bulkhead.timed_out, bulkhead.waiting) == (1, 0, 0)


async def test_zero_wait_timeout_rejects_at_once() -> None:
    bulkhead = make(limit=1, max_waiters=5, wait_timeout_s=0)
    assert await bulkhead.acquire()
    assert await bulkhead.acquire() is False
    assert bulkhead.rejected == 1 and bulkhead.waiting == 0


async def test_waiters_are_served_in_arrival_order() -> None:
    bulkhead = make(limit=1)
    assert await bulkhead.acquire()
    order: list[int] = []

    async def worker(i: int) -> None:
        assert await bulkhead.acquire()
        order.append(i)

    tasks = [asyncio.create_task(worker(i)) for i in range(4)]
    await settle()
    assert bulkhead.waiting == 4 and bulkhead.in_flight == 1
    for expected in range(4):
        bulkhead.release()
        # Handed over, not freed: a newcomer cannot overtake the queue meanwhile.
        assert bulkhead.in_flight == 1 and bulkhead.try_acquire() is False
        await settle()
        assert order == list(range(expected + 1))
    await asyncio.gather(*tasks)
    bulkhead.release()
    assert (bulkhead.in_flight, bulkhead.waiting, bulkhead.rejected) == (0, 0, 0)


async def test_a_waiter_times_out() -> None:
    bulkhead = make(limit=1, wait_timeout_s=0.01)
    assert await bulkhead.acquire()
    assert await bulkhead.acquire() is False
    assert (bulkhead.rejected, bulkhead.timed_out, bulkhead.waiting, bulkhead.in_flight) == (1, 1, 0, 1)
    bulkhead.release()
    assert bulkhead.in_flight == 0


async def test_a_slot_freed_before_the_timeout_is_granted() -> None:
    bulkhead = make(limit=1, wait_timeout_s=0.01)
    assert await bulkhead.acquire()
    waiter = asyncio.create_task(bulkhead.acquire())
    await settle()
    bulkhead.release()
    assert await waiter is True
    await asyncio.sleep(0.02)  # the cancelled timer must not fire into the granted waiter
    assert (bulkhead.in_flight, bulkhead.timed_out, bulkhead.rejected) == (1, 0, 0)


async def test_max_waiters_rejects_at_once() -> None:
    bulkhead = make(limit=1, max_waiters=2)
    assert await bulkhead.acquire()
    waiters = [asyncio.create_task(bulkhead.acquire()) for _ in range(2)]
    await settle()
    assert bulkhead.waiting == 2
    assert await bulkhead.acquire() is False
    assert bulkhead.rejected == 1 and bulkhead.timed_out == 0
    bulkhead.release()
    bulkhead.release()
    assert await asyncio.gather(*waiters) == [True, True]
    bulkhead.release()
    assert bulkhead.in_flight == 0


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    bulkhead = make(limit=1)
    assert await bulkhead.acquire()
    waiter = asyncio.create_task(bulkhead.acquire())
    await settle()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert bulkhead.waiting == 0 and bulkhead.in_flight == 1
    bulkhead.release()
    assert bulkhead.in_flight == 0 and bulkhead.rejected == 0


async def test_cancelled_after_the_handoff_passes_the_slot_on() -> None:
    bulkhead = make(limit=1)
    assert await bulkhead.acquire()
    first = asyncio.create_task(bulkhead.acquire())
    second = asyncio.create_task(bulkhead.acquire())
    await settle()
    bulkhead.release()  # the slot goes to `first`...
    first.cancel()  # ...which is cancelled before it can run
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second is True
    assert bulkhead.in_flight == 1 and bulkhead.waiting == 0
    bulkhead.release()
    assert bulkhead.in_flight == 0


async def test_cancelled_after_the_handoff_with_nobody_waiting_frees_the_slot() -> None:
    bulkhead = make(limit=1)
    assert await bulkhead.acquire()
    waiter = asyncio.create_task(bulkhead.acquire())
    await settle()
    bulkhead.release()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert bulkhead.in_flight == 0 and bulkhead.waiting == 0
    assert await bulkhead.acquire() is True


async def test_release_skips_a_waiter_cancelled_a_moment_ago() -> None:
    bulkhead = make(limit=1)
    assert await bulkhead.acquire()
    first = asyncio.create_task(bulkhead.acquire())
    second = asyncio.create_task(bulkhead.acquire())
    await settle()
    first.cancel()  # cancelled, but its task has not run yet: still queued
    bulkhead.release()
    assert await second is True
    with pytest.raises(asyncio.CancelledError):
        await first
    assert bulkhead.in_flight == 1 and bulkhead.waiting == 0
    bulkhead.release()
    assert bulkhead.in_flight == 0


async def test_an_outer_timeout_does_not_leak() -> None:
    bulkhead = make(limit=1, wait_timeout_s=5)
    assert await bulkhead.acquire()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await bulkhead.acquire()
    assert bulkhead.waiting == 0 and bulkhead.in_flight == 1
    bulkhead.release()
    assert bulkhead.in_flight == 0


async def test_random_cancellations_and_releases_never_leak() -> None:
    rng = random.Random(3)
    for _ in range(20):
        bulkhead = make(limit=3, max_waiters=100, wait_timeout_s=5)
        owned = 0  # slots the test holds: the initial ones plus every waiter that got True

        def count(task: asyncio.Task[bool]) -> None:
            nonlocal owned
            if not task.cancelled() and task.result():
                owned += 1

        for _ in range(3):
            assert await bulkhead.acquire()
            owned += 1
        tasks = [asyncio.create_task(bulkhead.acquire()) for _ in range(30)]
        for task in tasks:
            task.add_done_callback(count)
        await settle()
        for _ in range(60):
            op = rng.random()
            if op < 0.4:
                rng.choice(tasks).cancel()
            elif op < 0.8 and owned:
                bulkhead.release()
                owned -= 1
            else:
                await asyncio.sleep(0)
            assert bulkhead.in_flight <= bulkhead.limit
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert bulkhead.in_flight == owned and bulkhead.waiting == 0
        for _ in range(owned):
            bulkhead.release()
        assert bulkhead.in_flight == 0 and not bulkhead._waiters


def test_release_without_acquire_raises() -> None:
    bulkhead = make()
    with pytest.raises(RuntimeError, match="openai"):
        bulkhead.release()


async def test_bulkhead_snapshot() -> None:
    bulkhead = make(limit=2, max_waiters=0, wait_timeout_s=0.5)
    await bulkhead.acquire()
    await bulkhead.acquire()
    await bulkhead.acquire()
    assert bulkhead.snapshot() == {
        "name": "openai", "limit": 2, "in_flight": 2, "waiting": 0, "max_waiters": 0, "wait_timeout_s": 0.5,
        "rejected": 1, "timed_out": 0,
    }


@pytest.mark.parametrize("kw", [
    {"limit": 0}, {"max_waiters": -1}, {"wait_timeout_s": -1.0}, {"wait_timeout_s": float("inf")},
])
def test_bulkhead_rejects_nonsense(kw: dict[str, float]) -> None:
    args: dict[str, float] = {"limit": 1, "max_waiters": 1, "wait_timeout_s": 1.0, **kw}
    with pytest.raises(ValueError):
        Bulkhead("x", int(args["limit"]), max_waiters=int(args["max_waiters"]), wait_timeout_s=args["wait_timeout_s"])


# -- InFlightCaps ----------------------------------------------------------------------------


def test_global_cap() -> None:
    caps = InFlightCaps(2)
    assert [caps.try_enter() for _ in range(3)] == ["ok", "ok", "global"]
    assert caps.in_flight == 2
    caps.leave()
    assert caps.try_enter("acme") == "ok" and caps.in_flight_for("acme") == 1


def test_key_caps_and_default() -> None:
    caps = InFlightCaps(None, per_key={"acme": 1}, default_per_key=2)
    assert caps.try_enter("acme") == "ok"
    assert caps.try_enter("acme") == "key"
    assert [caps.try_enter("other") for _ in range(3)] == ["ok", "ok", "key"]
    assert caps.in_flight == 3 and caps.in_flight_for("acme") == 1 and caps.in_flight_for("other") == 2
    assert caps.try_enter() == "ok"  # no key, no global limit


def test_refusals_change_no_counter() -> None:
    caps = InFlightCaps(1, per_key={"acme": 5})
    assert caps.try_enter("acme") == "ok"
    assert caps.try_enter("acme") == "global"
    assert caps.try_enter("beta") == "global"
    assert caps.in_flight == 1 and caps.in_flight_for("acme") == 1 and caps.in_flight_for("beta") == 0
    assert caps.snapshot()["keys"] == {"acme": {"in_flight": 1, "limit": 5}}


def test_a_full_key_is_reported_before_a_full_gateway() -> None:
    caps = InFlightCaps(1, per_key={"acme": 1})
    assert caps.try_enter("acme") == "ok"
    assert caps.try_enter("acme") == "key"


def test_keys_without_a_cap_are_counted() -> None:
    caps = InFlightCaps(None)
    assert all(caps.try_enter("k") == "ok" for _ in range(1000))
    assert caps.in_flight_for("k") == 1000


def test_zero_cap_refuses_every_call() -> None:
    caps = InFlightCaps(0, per_key={"blocked": 0})
    assert caps.try_enter() == "global"
    assert InFlightCaps(None, per_key={"blocked": 0}).try_enter("blocked") == "key"


def test_leave_drops_idle_keys() -> None:
    caps = InFlightCaps(10, default_per_key=3)
    for key in ("a", "a", "b"):
        assert caps.try_enter(key) == "ok"
    caps.leave("a")
    assert caps.in_flight_for("a") == 1
    caps.leave("a")
    caps.leave("b")
    assert caps.in_flight == 0 and caps._by_key == {}
    assert caps.snapshot() == {"limit": 10, "in_flight": 0, "keys": {}}


def test_unbalanced_leave_raises_and_changes_nothing() -> None:
    caps = InFlightCaps(None)
    with pytest.raises(RuntimeError):
        caps.leave()
    assert caps.try_enter("a") == "ok"
    with pytest.raises(RuntimeError, match="'b'"):
        caps.leave("b")
    assert caps.in_flight == 1 and caps.in_flight_for("a") == 1


def test_caps_snapshot_sorted() -> None:
    caps = InFlightCaps(5, per_key={"b": 2})
    caps.try_enter("b")
    caps.try_enter("a")
    snap = caps.snapshot()
    assert list(snap["keys"]) == ["a", "b"]
    assert snap == {"limit": 5, "in_flight": 2,
                    "keys": {"a": {"in_flight": 1, "limit": None}, "b": {"in_flight": 1, "limit": 2}}}


@pytest.mark.parametrize("kw", [{"limit": -1}, {"default_per_key": -1}, {"per_key": {"a": -1}}])
def test_caps_reject_negative_limits(kw: dict[str, object]) -> None:
    args: dict[str, object] = {"limit": None, **kw}
    with pytest.raises(ValueError):
        InFlightCaps(**args)  # type: ignore[arg-type]
