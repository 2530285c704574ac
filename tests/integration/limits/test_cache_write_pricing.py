"""Anthropic prompt-cache writes through the whole gateway: priced apart, recorded apart, enforced.

A real gateway process with an `anthropic` provider in front of the real `gateway mock-upstream`
(whose Anthropic face reports cache writes for requests with `cache_control` marks), on memory +
SQLite and on Redis + PostgreSQL. The envelope's cost and `gateway report costs` must equal the
mock's usage times the price table to the pico-dollar, and a USD budget must hold against what
Anthropic would bill (writes at 1.25x and 2x the input price), not the input price.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.mock_upstream import answers
from tests.support.gateway import GatewayInstance, start_gateway
from tests.support.processes import RunningProcess

MODEL = "claude-haiku-mock"
ROUTES = {"claude": {"targets": [{"provider": "claude", "model": MODEL}], "retries": 0, "max_tokens": 16}}
# 0.800003 USD per 1M tokens = 800,003 pico-dollars a token: 1.25x is 1,000,003.75, billed (rounded up)
# as 1,000,004; 2x is exactly 1,600,006.
PRICES = f"prices:\n  claude/{MODEL}: {{input: 0.800003, cached_input: 0.08, output: 4}}\n"
P_IN, P_CACHED, P_OUT, P_WRITE, P_WRITE_1H = 800_003, 80_000, 4_000_000, 1_000_004, 1_600_006
SECTION = "Section {i}: the refund policy applies to every order placed before the cut-off date. "
ONE_HOUR = {"type": "ephemeral", "ttl": "1h"}


@pytest.fixture
def start(tmp_path: Path, upstream: RunningProcess, backend: dict[str, str]) -> Iterator[Any]:
    started: list[GatewayInstance] = []

    def make(tenants: dict[str, Any]) -> GatewayInstance:
        root = tmp_path / f"gw{len(started)}"
        (root / "config").mkdir(parents=True)
        (root / "config" / "pricing.yaml").write_text(PRICES)
        providers = {"claude": {"kind": "anthropic", "base_url": upstream.url, "timeout_s": 10}}
        gw = start_gateway(root, providers=providers, routes=ROUTES, tenants=tenants, storage=backend)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


def _messages(i: int) -> list[dict[str, Any]]:
    """A system prompt cached for an hour, a document cached for 5 minutes, and a question."""
    manual = "".join(SECTION.format(i=k) for k in range(30))
    return [
        {"role": "system", "content": [{"type": "text", "text": manual, "cache_control": ONE_HOUR}]},
        {"role": "user", "content": [
            {"type": "text", "text": f"Order {i}: " + SECTION.format(i=i) * 8, "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": f"Is order {i} refundable?"},
        ]},
    ]


async def _calls(gw: GatewayInstance, tenant: str, n: int) -> list[str]:
    """n calls one after another (half of them streams): ok or refused."""
    out = []
    async with gw.async_client(tenant) as client:
        for i in range(n):
            try:
                if i % 2:
                    stream = await client.chat.completions.create(
                        model="claude", messages=_messages(i), stream=True,  # type: ignore[arg-type]
                        stream_options={"include_usage": i % 4 == 1})
                    async for _ in stream:
                        pass
                else:
                    await client.chat.completions.create(model="claude", messages=_messages(i))  # type: ignore[arg-type]
                out.append("ok")
            except openai.RateLimitError as e:
                assert e.code == "insufficient_quota", e
                out.append("refused")
    return out


def _mock_usage(body: dict[str, Any]) -> dict[str, Any]:
    """The usage the mock answered one logged upstream request with (a stream's: message_start's, with
    message_delta's output count)."""
    if not body.get("stream"):
        return answers.anthropic_message(body, model=body["model"])["usage"]
    events = dict(answers.anthropic_events(body, model=body["model"]))
    output = events["message_delta"]["usage"]["output_tokens"]
    return {**events["message_start"]["message"]["usage"], "output_tokens": output}


def _priced(usage: dict[str, Any]) -> tuple[int, int, int, int]:
    """(prompt tokens, cache-write tokens, 1-hour ones, exact cost) by the price table above."""
    split = usage.get("cache_creation") or {}
    written_1h = split.get("ephemeral_1h_input_tokens", 0)
    written = usage["cache_creation_input_tokens"]
    prompt = usage["input_tokens"] + usage["cache_read_input_tokens"] + written
    cost = (usage["input_tokens"] * P_IN + usage["cache_read_input_tokens"] * P_CACHED
            + (written - written_1h) * P_WRITE + written_1h * P_WRITE_1H + usage["output_tokens"] * P_OUT)
    return prompt, written, written_1h, cost


def _report(gw: GatewayInstance, tenant: str, requests: int) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        out = subprocess.run([sys.executable, "-m", "gateway", "report", "costs", "--config", str(gw.config_path),
                              "--format", "json", "--tenant", tenant], capture_output=True, text=True, timeout=60,
                             env=gw.env)
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        if report["totals"]["requests"] >= requests or time.monotonic() > deadline:
            return report
        time.sleep(0.3)


def test_cache_writes_are_priced_to_the_pico_dollar_and_the_usd_budget_holds(start: Any, tenant: str,
                                                                             upstream_log: Any) -> None:
    """The attack: calls whose prompts Anthropic bills mostly as cache writes (1.25x and 2x the input
    price). Priced as input, the tenant was served 1.64x its USD budget, and the ledger said less."""
    budget_pico = 10_000_000_000  # $0.01: about nine of these calls at their real price, 15 at the input price
    gw = start({tenant: {"budgets": {"usd_per_day": "0.01"}}})
    outcomes = asyncio.run(_calls(gw, tenant, 20))
    usages = [_mock_usage(e["body"]) for e in upstream_log()]
    assert len(usages) == outcomes.count("ok")
    assert all(u["cache_creation"]["ephemeral_1h_input_tokens"] > 0 for u in usages)
    priced = [_priced(u) for u in usages]
    billed = sum(p[3] for p in priced)
    assert billed <= budget_pico, (billed, outcomes)
    assert "refused" in outcomes and outcomes.count("ok") >= 5

    totals = _report(gw, tenant, len(outcomes))["totals"]
    assert (totals["requests"], totals["errors"]) == (len(outcomes), outcomes.count("refused"))  # refusals too
    assert totals["prompt_tokens"] == sum(p[0] for p in priced)
    assert (totals["cache_write_tokens"], totals["cache_write_1h_tokens"]) == (sum(p[1] for p in priced),
                                                                               sum(p[2] for p in priced))
    assert totals["cost_picousd"] == billed  # exact, to the pico-dollar: the ledger agrees with the bill
    writes = sum((p[1] - p[2]) * P_WRITE + p[2] * P_WRITE_1H for p in priced)
    assert totals["cache_write_picousd"] == writes and 0 < writes < billed
