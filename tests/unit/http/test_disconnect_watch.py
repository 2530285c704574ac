"""The ingress's disconnect watch: a request whose client left is cancelled at once, unless it only has
left what the provider bills anyway (`Call.linger_s`): then it may end on its own within that time."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.deadlines import Deadlines
from gateway.http.ingress import _DisconnectWatch
from gateway.pipeline.context import Call


class _Client:
    """An ASGI receive: the body, then a disconnect once `leave()` is called."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = [{"type": "http.request", "body": b"{}", "more_body": False}]
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        if self.messages:
            return self.messages.pop(0)
        await self.gone.wait()
        return {"type": "http.disconnect"}


async def _run(linger_s: float, work_s: float, *, complete_at_s: float | None = None) -> tuple[Call, float, bool]:
    """A request that works for `work_s` after its body; its client leaves 0.1 s in. Returns the Call,
    how long after the client left the request ended, and whether it was cancelled."""
    client, deadlines, call = _Client(), Deadlines(), Call(request_id="r", method="POST", path="/v1/chat/completions")

    async def request() -> None:
        watch = _DisconnectWatch(client.receive, 1000, deadlines, call)  # type: ignore[arg-type]
        try:
            await watch.receive()
            call.linger_s = linger_s
            if complete_at_s is not None:
                await asyncio.sleep(complete_at_s)
                watch.response_complete = True
                await asyncio.sleep(work_s - complete_at_s)
            else:
                await asyncio.sleep(work_s)
        finally:
            watch.stop()

    task = asyncio.create_task(request())
    await asyncio.sleep(0.1)  # the watch is on (it starts 50 ms after the body)
    client.gone.set()
    left = time.monotonic()
    cancelled = False
    try:
        await task
    except asyncio.CancelledError:
        cancelled = True
    await deadlines.aclose()
    return call, time.monotonic() - left, cancelled


async def test_a_request_whose_client_left_is_cancelled_at_once() -> None:
    call, after, cancelled = await _run(linger_s=0.0, work_s=5)
    assert cancelled and after < 0.5 and call.linger_s == 0


async def test_a_lingering_request_may_end_on_its_own_within_its_linger() -> None:
    call, after, cancelled = await _run(linger_s=1.0, work_s=0.3)
    assert not cancelled and call.client_disconnected and after < 1.0


async def test_a_lingering_request_is_cancelled_when_its_linger_is_over() -> None:
    call, after, cancelled = await _run(linger_s=0.3, work_s=5)
    assert cancelled and call.client_disconnected
    assert 0.3 <= after < 1.5


async def test_a_request_whose_response_is_done_is_not_cancelled_after_its_linger() -> None:
    # Its last byte went out during the linger: what still runs is its accounting.
    _, after, cancelled = await _run(linger_s=0.2, work_s=0.6, complete_at_s=0.15)
    assert not cancelled and after >= 0.4
