"""An attempt that timed out while the provider worked may have been billed, and is counted so.

The attack: a tenant whose calls the upstream answers more slowly than the route's attempt timeout
(a long generation; here the mock's latency directive) had every attempt time out, the gateway
retry, and, every attempt having "failed", the whole reservation released: the provider served
(and billed) three answers a call while the tenant's budget counted nothing, without end. Now an
attempt that timed out counts its reservation as spent, a further attempt reserves again (or is not
made: the timeout is the answer), and the envelope records what was counted.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.integration.limits.conftest import GatewayFactory

PROMPT_TOKENS, COMPLETION_TOKENS = 8, 5  # what the mock bills for HELLO
BUDGET = 200
ROUTE = {"chat": {"targets": [{"provider": "up", "model": "gpt-4o-mini"}], "retries": 2,
                  "attempt_timeout_s": 0.15, "backoff": {"base_s": 0.0, "cap_s": 0.0}}}


@pytest.mark.parametrize("stream", [False, True])
def test_timed_out_attempts_count_against_the_budget(
        make_gateway: GatewayFactory, tenant: str, upstream_log: Callable[[], list[dict[str, Any]]],
        stream: bool) -> None:
    gw = make_gateway(ROUTE, {tenant: {"budgets": {"tokens_per_day": BUDGET}}})
    marker = os.urandom(6).hex()
    body: dict[str, Any] = {"model": "chat", "max_tokens": 10,
                            "messages": [{"role": "user", "content": f"{marker} #mock{{\"latency_ms\": 600}}"}]}
    if stream:  # no first chunk within the attempt timeout
        body["stream"] = True

    async def calls() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gw.url, timeout=20,
                                     headers={"authorization": f"Bearer {gw.key(tenant)}"}) as http:
            return list(await asyncio.gather(*(http.post("/v1/chat/completions", json=body) for _ in range(12))))

    answers = asyncio.run(calls())
    assert {r.status_code for r in answers} <= {429, 504}, [r.text for r in answers]
    time.sleep(1.0)  # the mock answers every attempt 600 ms after it came (and bills it)
    served = [e for e in upstream_log() if marker in str(e.get("body")) and e.get("status") == 200]
    served_tokens = sum(PROMPT_TOKENS + min(COMPLETION_TOKENS, e["body"]["max_tokens"]) for e in served)
    assert served_tokens <= BUDGET, f"{len(served)} attempts served ({served_tokens} tokens) on a budget of {BUDGET}"
    # the ledger records what the budget counted: at least what was served
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {gw.admin_key}"}, timeout=10) as admin:
        deadline = time.monotonic() + 10
        while True:
            totals = admin.get("/admin/reports/costs", params={"tenant": tenant, "format": "json"}).json()["totals"]
            if totals["requests"] >= len(answers) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    counted = totals["prompt_tokens"] + totals["completion_tokens"]
    assert served_tokens <= counted <= BUDGET, totals


def test_without_budgets_timed_out_attempts_are_recorded_at_the_prompt_estimate(
        make_gateway: GatewayFactory, tenant: str, upstream_log: Callable[[], list[dict[str, Any]]]) -> None:
    """Nothing reserved: as for a call cut short, the envelope records the best estimate (each
    timed-out attempt's prompt), not nothing, so the cost report does not miss what was billed."""
    gw = make_gateway(ROUTE, {tenant: {}})
    body = {"model": "chat", "max_tokens": 10,
            "messages": [{"role": "user", "content": 'hello #mock{"latency_ms": 600}'}]}
    with gw.http(tenant) as http:
        r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 504, r.text
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {gw.admin_key}"}, timeout=10) as admin:
        deadline = time.monotonic() + 10
        while True:
            report = admin.get("/admin/reports/costs", params={"tenant": tenant, "format": "json"}).json()
            if report["totals"]["requests"] >= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    attempts = 1 + ROUTE["chat"]["retries"]  # type: ignore[index]
    assert report["totals"]["prompt_tokens"] >= attempts * PROMPT_TOKENS, report
    assert report["totals"]["cost_picousd"] > 0
