"""The clean-up runner on its own: once, last registered first, every step whatever the others do."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.pipeline.cleanup import CLIENT_GONE, FAILED, SERVED, run_cleanups
from gateway.pipeline.context import Call


def _call() -> Call:
    return Call(request_id="r-1", method="POST", path="/v1/chat/completions")


def test_steps_run_once_last_first_without_a_coroutine() -> None:
    call, ran = _call(), []
    for name in ("record", "slot", "settle"):
        call.cleanups.append(lambda c, ending, name=name: ran.append((name, ending)))  # type: ignore[misc]
    assert run_cleanups(call, SERVED) is None  # nothing waited: no awaitable to drive
    assert ran == [("settle", SERVED), ("slot", SERVED), ("record", SERVED)]
    assert run_cleanups(call, FAILED) is None and len(ran) == 3  # a second run finds nothing to do
    assert call.ending == SERVED


def test_a_failing_step_does_not_skip_the_others(caplog: pytest.LogCaptureFixture) -> None:
    call, ran = _call(), []

    def broken(c: Call, ending: str) -> None:
        raise RuntimeError("boom")

    call.cleanups += [lambda c, e: ran.append("first"), broken, lambda c, e: ran.append("last")]
    with caplog.at_level(logging.ERROR, logger="gateway.cleanup"):
        assert run_cleanups(call, FAILED) is None
    assert ran == ["last", "first"]
    assert "clean-up step failed" in caplog.text and "r-1" in str(caplog.records[0].__dict__.get("fields"))


async def test_a_waiting_step_then_the_rest() -> None:
    call, ran = _call(), []

    async def settle() -> None:
        await asyncio.sleep(0)
        ran.append("settled")

    call.cleanups += [lambda c, e: ran.append(("record", e)), lambda c, e: settle()]
    pending = run_cleanups(call, CLIENT_GONE)
    assert pending is not None and ran == []
    await pending
    assert ran == ["settled", ("record", CLIENT_GONE)]


async def test_cancelled_while_a_step_waits_the_step_finishes_and_the_rest_run() -> None:
    call, ran = _call(), []
    gate, waiting = asyncio.Event(), asyncio.Event()

    async def settle() -> None:
        waiting.set()
        await gate.wait()
        ran.append("settled")

    async def slow_close() -> None:
        await asyncio.sleep(0)
        ran.append("closed")

    call.cleanups += [lambda c, e: ran.append("record"), lambda c, e: settle(), lambda c, e: slow_close()]

    async def request() -> None:
        pending = run_cleanups(call, SERVED)
        assert pending is not None
        await pending

    task = asyncio.create_task(request())
    await waiting.wait()
    task.cancel()  # while the settlement waits
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ran == ["closed", "record"] and not call.cleanups  # the record ran, each step was started once
    gate.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert ran == ["closed", "record", "settled"]  # the shielded settlement ran to its end
