"""Every way a model call can end runs each clean-up step exactly once, last registered first, and
leaves the counters, the in-flight caps and the record as they must be. The declared pipeline runs
in this process (tests/unit/pipeline/harness.py): scripted providers, an injected clock, no sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import UpstreamRejected, UpstreamUnavailable
from gateway.pipeline.model_call import STAGES
from gateway.store.state.base import Bucket
from gateway.store.state.memory import MemoryStateStore
from tests.unit.pipeline.harness import COMPLETION, PROMPT, Harness, Reply, settings_at
from tests.unit.pipeline.probe import Probe, steps_of

CHAT: dict[str, Any] = {"model": "chat", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with Harness(settings_at(tmp_path), stages=(Probe, *STAGES)) as h:
        yield h


def _assert_each_step_ran_once(reply: Reply, ending: str) -> None:
    steps = steps_of(reply.call)
    assert len(steps) == 0
    assert sorted(map(id, steps.ran)) == sorted(map(id, steps.registered))
    assert len(steps.ran) == len(steps.registered) >= 3  # the record, the ingress slot, the tenant slot at least
    assert steps.ran == steps.registered[::-1]  # last registered, first run
    assert reply.call.ending == ending


def _assert_nothing_held(h: Harness, envelopes: int) -> None:
    gw = h.gateway
    assert gw.ingress_caps.in_flight == 0
    assert gw.tenant_caps.in_flight == 0
    assert not gw.limits._live
    assert len(h.envelopes) == envelopes


async def test_served_json(harness: Harness) -> None:
    reply = await harness.request(CHAT)
    assert reply.status == 200 and reply.json()["choices"][0]["message"]["content"] == "hello"
    _assert_each_step_ran_once(reply, "served")
    assert (await harness.counted())["tokens_per_day"] == PROMPT + COMPLETION
    _assert_nothing_held(harness, envelopes=1)
    call = reply.call
    assert [name for name, _, _ in call.stage_timings()] == ["probe", "auth", "admission", "body", "policy", "limits",
                                                      "upstream"]
    assert all(start <= end for _, start, end in call.stage_timings())
    (attempt,) = call.attempts
    assert attempt.started and attempt.ended >= attempt.started


async def test_served_stream(harness: Harness) -> None:
    harness.providers["a"].script = ["stream"]
    reply = await harness.request({**CHAT, "stream": True})
    assert reply.status == 200 and reply.events()[-1] == b"[DONE]"
    _assert_each_step_ran_once(reply, "served")
    assert harness.providers["a"].closed == 1
    assert (await harness.counted())["tokens_per_day"] == PROMPT + COMPLETION
    _assert_nothing_held(harness, envelopes=1)


async def test_failover_then_served(harness: Harness) -> None:
    harness.providers["a"].script = [UpstreamUnavailable("a is down")]
    reply = await harness.request(CHAT)
    assert reply.status == 200 and reply.headers["x-gateway-provider"] == "b"
    assert [(a.provider, a.error) for a in reply.call.attempts] == [("a", "UpstreamUnavailable"), ("b", None)]
    _assert_each_step_ran_once(reply, "served")
    assert (await harness.counted())["tokens_per_day"] == PROMPT + COMPLETION
    _assert_nothing_held(harness, envelopes=1)


async def test_provider_failure_releases_the_reservation(harness: Harness) -> None:
    harness.providers["a"].script = [UpstreamRejected("no such thing", param="messages")]
    reply = await harness.request(CHAT)
    assert reply.status == 400 and reply.json()["error"]["param"] == "messages"
    _assert_each_step_ran_once(reply, "failed")
    assert (await harness.counted())["tokens_per_day"] == 0
    _assert_nothing_held(harness, envelopes=1)


async def test_every_target_failing_releases_the_reservation(harness: Harness) -> None:
    for name in ("a", "b"):
        harness.providers[name].script = [UpstreamUnavailable("down")] * 5
    reply = await harness.request({**CHAT, "model": "chat"})
    assert reply.status == 502
    attempts = reply.call.attempts
    assert len(attempts) == 1 + harness.gateway.settings.routes["chat"].retries
    assert harness.clock.slept  # a target tried again waited its backoff, on the injected clock
    _assert_each_step_ran_once(reply, "failed")
    assert (await harness.counted())["tokens_per_day"] == 0
    _assert_nothing_held(harness, envelopes=1)


async def test_budget_refusal(tmp_path: Path) -> None:
    settings = settings_at(tmp_path, tenant={"budgets": {"tokens_per_day": 20}})
    async with Harness(settings, stages=(Probe, *STAGES)) as h:
        reply = await h.request(CHAT)
        assert reply.status == 429 and reply.json()["error"]["code"] == "insufficient_quota"
        assert h.providers["a"].calls == 0
        _assert_each_step_ran_once(reply, "failed")
        assert (await h.counted())["tokens_per_day"] == 0
        _assert_nothing_held(h, envelopes=1)


async def test_client_gone_while_the_provider_works(harness: Harness) -> None:
    """The provider may bill what it generated: the reservation stands as spent, against the target called."""
    harness.providers["a"].script = ["hang"]
    gone = asyncio.Event()
    task = asyncio.create_task(harness.request(CHAT, leave=gone))
    await harness.providers["a"].entered.wait()
    harness.leave(gone)
    reply = await task
    assert reply.status == 0  # nothing was sent: the client had gone
    _assert_each_step_ran_once(reply, "client_gone")
    reserved = reply.call.prompt_estimate + 50  # type: ignore[operator]
    assert (await harness.counted())["tokens_per_day"] == reserved
    assert reply.call.provider == "a" and reply.call.attempts[-1].error == "Cancelled"
    _assert_nothing_held(harness, envelopes=1)


async def test_client_gone_mid_stream(harness: Harness) -> None:
    """No usage came: the reservation stands as spent; the upstream is closed once."""
    provider = harness.providers["a"]
    provider.script = ["stream_wait"]
    gone = asyncio.Event()
    task = asyncio.create_task(harness.request({**CHAT, "stream": True}, leave=gone))
    await provider.entered.wait()
    harness.leave(gone)
    reply = await task
    assert reply.status == 200
    _assert_each_step_ran_once(reply, "client_gone")
    assert provider.closed == 1 and reply.call.client_disconnected
    assert (await harness.counted())["tokens_per_day"] == reply.call.prompt_estimate + 50  # type: ignore[operator]
    _assert_nothing_held(harness, envelopes=1)


async def test_cancelled_by_the_server_while_the_provider_works(harness: Harness) -> None:
    harness.providers["a"].script = ["hang"]
    task = asyncio.create_task(harness.request(CHAT))
    await harness.providers["a"].entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (call,) = harness.calls
    assert call.ending == "cancelled" and not call.cleanups
    assert (await harness.counted())["tokens_per_day"] == call.prompt_estimate + 50  # type: ignore[operator]
    _assert_nothing_held(harness, envelopes=1)


class GatedStore:
    """A store that must be waited for (as Redis is), in front of the memory store; its settlement
    waits until `gate` opens."""

    def __init__(self) -> None:
        self.inner = MemoryStateStore()
        self.gate = asyncio.Event()
        self.settling = asyncio.Event()
        self.settled = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def settle(self, reservation_id: str, buckets: Sequence[Bucket], actual: Any,
                     now: float | None = None) -> None:
        self.settling.set()
        await self.gate.wait()
        await self.inner.settle(reservation_id, buckets, actual, now)
        self.settled += 1


async def test_cancelled_during_settlement(tmp_path: Path) -> None:
    """The settlement runs to its end in its own task, the steps after it still run, each once."""
    store = GatedStore()
    async with Harness(settings_at(tmp_path), stages=(Probe, *STAGES), state=store) as h:  # type: ignore[arg-type]
        task = asyncio.create_task(h.request(CHAT))
        await store.settling.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (call,) = h.calls
        steps = steps_of(call)
        assert sorted(map(id, steps.ran)) == sorted(map(id, steps.registered)) and not steps
        assert h.gateway.tenant_caps.in_flight == 0 and h.gateway.ingress_caps.in_flight == 0
        assert len(h.envelopes) == 1  # the record ran, after the settlement was started
        assert store.settled == 0
        store.gate.set()
        for _ in range(10):
            await asyncio.sleep(0)
        assert store.settled == 1
        assert (await h.counted())["tokens_per_day"] == PROMPT + COMPLETION


class SlowReserveStore(GatedStore):
    """A networked store whose reservation is made at once but whose answer comes only when `gate`
    opens (a Redis script that ran, its reply on its way)."""

    def __init__(self) -> None:
        super().__init__()
        self.reserving = asyncio.Event()

    async def reserve(self, reservation_id: str, buckets: Sequence[Bucket], ttl_s: float,
                      now: float | None = None) -> Any:
        decision = await self.inner.reserve(reservation_id, buckets, ttl_s, now)
        self.reserving.set()
        await self.gate.wait()
        return decision


async def test_client_gone_while_reserving_on_a_networked_store(tmp_path: Path) -> None:
    """What the store reserved for a request whose client left meanwhile is given back once its
    answer comes, not held until it expires (a route's budget is shared by every tenant)."""
    store = SlowReserveStore()
    async with Harness(settings_at(tmp_path), stages=(Probe, *STAGES), state=store) as h:  # type: ignore[arg-type]
        gone = asyncio.Event()
        task = asyncio.create_task(h.request(CHAT, leave=gone))
        await store.reserving.wait()
        h.leave(gone)
        reply = await task
        assert reply.call.ending == "client_gone" and h.providers["a"].calls == 0
        store.gate.set()
        for _ in range(10):
            await asyncio.sleep(0)
        assert (await h.counted())["tokens_per_day"] == 0
        _assert_nothing_held(h, envelopes=1)


class SlowReleaseStore(GatedStore):
    """A networked store whose releases wait until `gate` opens."""

    def __init__(self) -> None:
        super().__init__()
        self.releasing = asyncio.Event()

    async def release(self, reservation_id: str, buckets: Sequence[Bucket], now: float | None = None) -> None:
        self.releasing.set()
        await self.gate.wait()
        await self.inner.release(reservation_id, buckets, now)


async def test_client_gone_while_an_error_answer_waits_for_its_clean_up(tmp_path: Path) -> None:
    """A client that leaves while its error answer waits for the release is a client gone, as at any
    other moment: the request ends quietly (no cancellation escapes the app to the server, which would
    log it as an application error), and the release still completes."""
    store = SlowReleaseStore()
    async with Harness(settings_at(tmp_path), stages=(Probe, *STAGES), state=store) as h:  # type: ignore[arg-type]
        h.providers["a"].script = [UpstreamRejected("no such thing", param="messages")]
        gone = asyncio.Event()
        task = asyncio.create_task(h.request(CHAT, leave=gone))
        await store.releasing.wait()
        h.leave(gone)
        for _ in range(10):
            await asyncio.sleep(0)
        store.gate.set()
        await task  # no CancelledError
        (call,) = h.calls
        steps = steps_of(call)
        assert sorted(map(id, steps.ran)) == sorted(map(id, steps.registered)) and not steps
        assert (await h.counted())["tokens_per_day"] == 0
        _assert_nothing_held(h, envelopes=1)


async def test_client_gone_while_the_router_waits_a_backoff(harness: Harness) -> None:
    """Between attempts no provider is working: the reservation is released, nothing counted."""
    for name in ("a", "b"):
        harness.providers[name].script = [UpstreamUnavailable("down")] * 5
    waiting = asyncio.Event()

    async def sleep(seconds: float) -> None:
        waiting.set()
        await asyncio.Event().wait()

    harness.gateway.router.sleep = sleep
    gone = asyncio.Event()
    task = asyncio.create_task(harness.request(CHAT, leave=gone))
    await waiting.wait()
    harness.leave(gone)
    reply = await task
    _assert_each_step_ran_once(reply, "client_gone")
    assert reply.call.status == 499 and reply.call.attempts[-1].error == "UpstreamUnavailable"
    assert (await harness.counted())["tokens_per_day"] == 0
    _assert_nothing_held(harness, envelopes=1)
