"""Money invariants after a mixed hostile workload on two replicas (Redis state, PostgreSQL ledger).

One tenant with a day budget in tokens and in dollars drives two gateway processes at once with
everything that has broken accounting before: `n` up to 128, both completion fields, streams cut at
random points, clients that time out while the upstream works, attempts that time out, images. Once
everything settled:
- what the mock upstream served (its own answers' usage: the ground truth of the provider's bill)
  is within the budget;
- the cost report == the sum of the tenant's envelopes == what the day counters in Redis hold
  (calls cut short count their whole reservation, so the counters are at least what was served);
- nothing is negative, every request has its envelope.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
from redis import Redis
from sqlalchemy import func, select

from gateway.limits.pricing import usd_to_picousd
from gateway.mock_upstream.answers import chat_completion
from gateway.store.ledger import Ledger
from gateway.store.schema import envelopes
from tests.integration.limits.conftest import REDIS_URL, GatewayFactory

BUDGET_TOKENS = 30_000
BUDGET_USD = "0.01"  # 10**10 pico-dollars: ~15,000 completion tokens at $0.60 per million
ROUTE = {"chat": {"targets": [{"provider": "up", "model": "gpt-4o-mini"}], "retries": 1,
                  "attempt_timeout_s": 0.5, "backoff": {"base_s": 0.0, "cap_s": 0.0}}}
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}}
REQUESTS = 160


def _body(rng: random.Random, marker: str, i: int) -> tuple[dict[str, Any], str]:
    """A random hostile request and how its client behaves: ok | cut | leave | slow."""
    text = f"{marker} r{i}r {'word ' * rng.randint(1, 40)}"
    behaviour = rng.choice(["ok", "ok", "cut", "leave", "slow"])
    if behaviour == "slow":  # every attempt outruns attempt_timeout_s
        text += ' #mock{"latency_ms": 700}'
    elif behaviour == "leave":  # the client gives up while the upstream works
        text += ' #mock{"latency_ms": 300}'
    content: Any = [{"type": "text", "text": text}, IMAGE] if rng.random() < 0.3 else text
    body: dict[str, Any] = {"model": "chat", "messages": [{"role": "user", "content": content}],
                            "n": rng.choice([1, 1, 2, 8, 32, 128])}
    small, large = sorted(rng.sample(range(1, 60), 2))
    if rng.random() < 0.5:
        body["max_completion_tokens"], body["max_tokens"] = small, large
    else:
        body["max_tokens"] = small
    if behaviour == "cut":
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body, behaviour


async def _run(gws: list[Any], tenant: str, marker: str) -> tuple[list[int], set[int]]:
    """Every request's status (0: its client timed out), and which requests timed out."""
    rng = random.Random(int.from_bytes(os.urandom(4)))
    statuses: list[int] = []
    left: set[int] = set()

    async def one(i: int) -> None:
        gw = gws[i % len(gws)]
        body, behaviour = _body(rng, marker, i)
        headers = {"authorization": f"Bearer {gw.key(tenant)}"}
        timeout = 0.1 if behaviour == "leave" else 10
        async with httpx.AsyncClient(base_url=gw.url, headers=headers, timeout=timeout) as http:
            try:
                if behaviour == "cut":
                    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                        statuses.append(r.status_code)
                        stop_after = rng.randint(0, 6)
                        async for k, _ in aenumerate(r.aiter_lines()):
                            if k >= stop_after:
                                break  # the client leaves mid-stream
                    return
                r = await http.post("/v1/chat/completions", json=body)
                statuses.append(r.status_code)
                assert r.status_code in (200, 429, 503, 504), r.text
            except httpx.TimeoutException:
                statuses.append(0)
                left.add(i)

    sem = asyncio.Semaphore(24)

    async def bounded(i: int) -> None:
        async with sem:
            await one(i)

    await asyncio.gather(*(bounded(i) for i in range(REQUESTS)))
    return statuses, left


async def aenumerate(it: Any) -> Any:
    k = 0
    async for x in it:
        yield k, x
        k += 1


async def _ledger_sums(url: str, tenant: str) -> tuple[int, int, int, int]:
    ledger = Ledger.from_url(url)
    c = envelopes.c
    try:
        async with ledger.read() as conn:
            row = (await conn.execute(select(
                func.count(), func.coalesce(func.sum(c.prompt_tokens + c.completion_tokens), 0),
                func.coalesce(func.sum(c.cost_picousd), 0),
                func.coalesce(func.min(c.prompt_tokens), 0), func.coalesce(func.min(c.completion_tokens), 0),
                func.coalesce(func.min(c.cost_picousd), 0),
            ).where(c.tenant == tenant))).one()
            return int(row[0]), int(row[1]), int(row[2]), min(int(row[3]), int(row[4]), int(row[5]))
    finally:
        await ledger.aclose()


def test_mixed_hostile_load_on_two_replicas_keeps_every_invariant(
        make_gateway: GatewayFactory, tenant: str, backend: dict[str, str],
        upstream_log: Callable[[], list[dict[str, Any]]]) -> None:
    tenants = {tenant: {"budgets": {"tokens_per_day": BUDGET_TOKENS, "usd_per_day": BUDGET_USD}}}
    # two replicas share their counters through Redis; on memory state, one process
    gws = [make_gateway(ROUTE, tenants) for _ in range(1 if backend["state"] == "memory" else 2)]
    marker = "m" + os.urandom(5).hex()
    statuses, left = asyncio.run(_run(gws, tenant, marker))
    assert 429 in statuses and 200 in statuses, statuses  # the load did reach the budget's edge
    time.sleep(2.5)  # the upstream finishes what timed-out clients and attempts left it; lingers end

    # ground truth: the usage of every answer the mock served
    served_tokens = 0
    for entry in upstream_log():
        body = entry.get("body") or {}
        if entry.get("status") == 200 and marker in str(body.get("messages")):
            usage = chat_completion(body, model=body["model"])["usage"]
            served_tokens += usage["prompt_tokens"] + usage["completion_tokens"]
    assert 0 < served_tokens <= BUDGET_TOKENS

    # (the access log is written by a thread: read once everything is over)
    # every request a gateway saw has its envelope (a client that timed out before its request was
    # read was never seen: no access line, and the upstream never had it either)
    access = [rec for gw in gws for rec in gw.log_lines()
              if rec.get("logger") == "gateway.access" and rec["path"] == "/v1/chat/completions"]
    with httpx.Client(base_url=gws[0].url, headers={"authorization": f"Bearer {gws[0].admin_key}"},
                      timeout=10) as admin:
        deadline = time.monotonic() + 15
        while True:
            report = admin.get("/admin/reports/costs", params={"tenant": tenant, "format": "json"}).json()["totals"]
            if report["requests"] >= len(access) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    ledger_url = backend["ledger"]
    if ledger_url.startswith("sqlite:///../"):  # relative to the gateway's config directory
        ledger_url = f"sqlite:///{gws[0].config_path.parent.parent / ledger_url.removeprefix('sqlite:///../')}"
    count, tokens, picousd, least = asyncio.run(_ledger_sums(ledger_url, tenant))
    # every request a gateway saw has its envelope (a client that timed out before its request was
    # read was never seen: no access line, and the upstream never had it either)
    assert count == report["requests"] == len(access) >= REQUESTS - len(left), (count, report, len(left))
    assert least >= 0
    assert report["total_tokens"] == tokens and report["cost_picousd"] == picousd
    assert served_tokens <= tokens <= BUDGET_TOKENS
    assert picousd <= usd_to_picousd(Decimal(BUDGET_USD))

    if backend["state"] == "memory":
        return  # (its counters are read from outside in test_spend_survives_kill.py)
    # what the counters hold, once every reservation settled
    url, _, prefix = backend["state"].partition("?key_prefix=")
    assert url == REDIS_URL
    stamp = datetime.now(UTC).strftime("%Y%m%d")
    r = Redis.from_url(url)
    day_tokens = int(r.get(f"{prefix}{{t:{tenant}}}:c:tenant:{tenant}:tokens_per_day:{stamp}") or 0)
    day_usd = int(r.get(f"{prefix}{{t:{tenant}}}:c:tenant:{tenant}:usd_per_day:{stamp}") or 0)
    assert (day_tokens, day_usd) == (tokens, picousd)
    # and no hold is left (each would be refreshed, and counted, until it expired)
    for unit in ("tokens", "usd"):
        holds = r.zrange(f"{prefix}{{t:{tenant}}}:c:tenant:{tenant}:{unit}_per_day:{stamp}:z", 0, -1)
        assert [m for m in holds if m != b"~seeded"] == []
