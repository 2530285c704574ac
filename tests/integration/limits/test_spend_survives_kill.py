"""Spend survives a SIGKILL under load (done-when of issue 12), without waiting for the ledger first.

A memory-state gateway is loaded by concurrent clients of two tenants (one with a day budget, one
with a month budget) and killed (SIGKILL, or SIGTERM for a clean stop) while calls are in flight:
nothing waits for the envelope writer before the signal. After a restart, what each budget counter
holds is read from outside, by what it still admits: a call is admitted iff counter + prompt
estimate + max_tokens <= limit, a refusal costs nothing, and an admitted probe adds the usage it
reports; so a binary search over max_tokens finds counter + estimate exactly, and a control tenant
that spent nothing gives the estimate.

The counter must hold at least the usage of every call answered before the last group-commit
window ahead of the kill (all of them after SIGTERM), and never more than what was answered plus
the reservations of the calls still in flight.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import openai

from tests.support.gateway import GatewayInstance, start_gateway

HELLO = [{"role": "user", "content": "hello"}]
MAX_TOKENS = 10
MOCK_ONLY = {"providers": {"mock": {"kind": "mock"}},
             "routes": {"demo": {"targets": [{"provider": "mock", "model": "mock-1"}]}}}
LIMIT = 10**7
TENANTS = {"day": {"budgets": {"tokens_per_day": LIMIT}},
           "month": {"budgets": {"tokens_per_month": LIMIT}},
           "fresh": {"budgets": {"tokens_per_day": LIMIT}}}
COMMIT_MS = 20  # storage.journal_commit_ms's default
SLACK_S = 0.03  # the write and fsync in progress, a busy 2-core machine (as the crash drill)
CONCURRENCY = 8  # per tenant


def _gateway(root: Path, ledger_url: str) -> GatewayInstance:
    return start_gateway(root, **MOCK_ONLY, tenants=TENANTS, storage={"ledger": ledger_url})


Answer = tuple[float, int]  # (monotonic time the answer was in, its total tokens)


async def _load(gw: GatewayInstance, stop_after_s: float, stop: signal.Signals
                ) -> tuple[dict[str, list[Answer]], float, int]:
    """Calls of both tenants until the gateway is sent `stop`; returns each tenant's answers, when
    the signal was sent and how many calls were in flight at most (all callers)."""
    answered: dict[str, list[Answer]] = {"day": [], "month": []}
    stopped = asyncio.Event()

    async def caller(tenant: str, client: openai.AsyncOpenAI) -> None:
        while not stopped.is_set():
            try:
                r = await client.chat.completions.create(model="demo", messages=HELLO, max_tokens=MAX_TOKENS)
            except (openai.APIConnectionError, openai.APIStatusError):
                if stopped.is_set():
                    return
                raise
            assert r.usage is not None
            answered[tenant].append((time.monotonic(), r.usage.total_tokens))

    clients = {t: gw.async_client(t, timeout=10) for t in answered}
    callers = [asyncio.create_task(caller(t, c)) for t, c in clients.items() for _ in range(CONCURRENCY)]
    await asyncio.sleep(stop_after_s)
    sent_at = time.monotonic()
    os.kill(gw.process.pid, stop)
    stopped.set()
    await asyncio.gather(*callers)
    for c in clients.values():
        await c.close()
    return answered, sent_at, len(callers)


def _held(gw: GatewayInstance, tenant: str) -> int:
    """counter + prompt estimate of the tenant's budget, found by what it still admits."""
    spent_by_probes = 0
    lo, hi = 0, LIMIT - 1  # counter + estimate is in [lo, hi]
    with gw.http(tenant) as http:
        while lo < hi:
            mid = (lo + hi) // 2
            max_tokens = LIMIT - spent_by_probes - mid  # admitted iff held + spent + max_tokens <= LIMIT
            assert max_tokens >= 1
            r = http.post("/v1/chat/completions", json={"model": "demo", "messages": HELLO, "max_tokens": max_tokens})
            if r.status_code == 429:
                assert r.json()["error"]["code"] == "insufficient_quota", r.text
                lo = mid + 1
            else:
                assert r.status_code == 200, r.text
                spent_by_probes += r.json()["usage"]["total_tokens"]
                hi = mid
    return lo


def _counted(gw: GatewayInstance, tenants: list[str]) -> dict[str, int]:
    """Each tenant's counter (the control tenant is probed once: its probes spend)."""
    estimate = _held(gw, "fresh")
    return {t: _held(gw, t) - estimate for t in tenants}


def _check(gw: GatewayInstance, answered: dict[str, list[Answer]], sent_at: float, window_s: float | None,
           in_flight: int) -> None:
    counters = _counted(gw, list(answered))
    for tenant, answers in answered.items():
        counted = counters[tenant]
        total = sum(tokens for _, tokens in answers)
        must = total if window_s is None else sum(tokens for at, tokens in answers if at < sent_at - window_s)
        # at most: everything answered, and every call still in flight at its whole reservation
        reserve_each = max(tokens for _, tokens in answers) + MAX_TOKENS
        assert must <= counted <= total + in_flight * reserve_each, (
            f"{tenant}: counter {counted}, answered {total} ({len(answers)} calls), must count {must}")
        print(f"{tenant}: {len(answers)} answered ({total} tokens), {must} due, counter {counted}")


def test_sigkill_under_load_keeps_the_day_and_month_spend(tmp_path: Path, ledger_url: str) -> None:
    gw = _gateway(tmp_path, ledger_url)
    try:
        answered, sent_at, in_flight = asyncio.run(_load(gw, 1.5, signal.SIGKILL))
        assert gw.process.proc.wait(10) == -signal.SIGKILL
    finally:
        gw.stop()
    assert min(len(a) for a in answered.values()) >= 50, "the drill needs load to mean anything"
    again = _gateway(tmp_path, ledger_url)
    try:
        _check(again, answered, sent_at, COMMIT_MS / 1000 + SLACK_S, in_flight)
    finally:
        again.stop()


def test_sigterm_under_load_keeps_all_the_day_and_month_spend(tmp_path: Path) -> None:
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"  # (the clean stop's path does not depend on the ledger)
    gw = _gateway(tmp_path, ledger_url)
    try:
        answered, sent_at, in_flight = asyncio.run(_load(gw, 0.8, signal.SIGTERM))
        assert gw.process.proc.wait(20) in (0, -signal.SIGTERM), gw.process.output()[-2000:]
    finally:
        gw.stop()
    assert min(len(a) for a in answered.values()) >= 20
    again = _gateway(tmp_path, ledger_url)
    try:
        _check(again, answered, sent_at, None, in_flight)
    finally:
        again.stop()


def test_probe_reads_a_counter_exactly(tmp_path: Path) -> None:
    """The probe itself: after k calls of known usage (waiting for nothing), it reads k x usage."""
    gw = _gateway(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        client = gw.client("day")
        total = sum(client.chat.completions.create(model="demo", messages=HELLO, max_tokens=MAX_TOKENS)
                    .usage.total_tokens for _ in range(7))  # type: ignore[union-attr]
        assert _counted(gw, ["day"]) == {"day": total}
    finally:
        gw.stop()
