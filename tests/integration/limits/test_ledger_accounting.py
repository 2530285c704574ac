"""Money and envelopes: concurrent budgets over two gateways, exact cost reports, a ledger outage."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.mock_upstream import answers
from tests.integration.limits.conftest import GatewayFactory
from tests.support.gateway import GatewayInstance
from tests.support.pg import PORT as PG_PORT
from tests.support.tcpproxy import ThreadedTcpProxy

ROUTES = {"chat": {"targets": [{"provider": "up", "model": "gpt-4o-mini"}], "retries": 0},
          "embed": {"targets": [{"provider": "up", "model": "text-embedding-3-small"}], "retries": 0}}
PICO = {"gpt-4o-mini": (150_000, 75_000, 600_000), "text-embedding-3-small": (20_000, 20_000, 0)}
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}


def _mock_usage(entry: dict[str, Any]) -> tuple[int, int, int]:
    """What the mock returned for one logged request: (prompt, completion, cost in pico-dollars)."""
    body = entry["body"]
    if entry["path"].endswith("/embeddings"):
        usage = answers.embeddings_response(body, model=body["model"])["usage"]
        prompt, completion = usage["prompt_tokens"], 0
    else:
        usage = answers.chat_completion(body, model=body["model"])["usage"]
        prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
    p_in, _, p_out = PICO[body["model"]]
    return prompt, completion, prompt * p_in + completion * p_out


def _report(gw: GatewayInstance, *args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "gateway", "report", "costs", "--config", str(gw.config_path),
                          "--format", "json", *args], capture_output=True, text=True, timeout=60, env=gw.env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _wait_report(gw: GatewayInstance, tenant: str, requests: int) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        report = _report(gw, "--tenant", tenant)
        if report["totals"]["requests"] >= requests or time.monotonic() > deadline:
            return report
        time.sleep(0.3)


async def _traffic(gw: GatewayInstance, tenant: str, n: int, *, disconnect_every: int = 0) -> list[str]:
    """A mix of calls; returns an outcome per call: ok, refused, disconnected."""
    async with gw.async_client(tenant) as client:
        async def one(i: int) -> str:
            try:
                kind = i % 5
                if kind in (0, 1):
                    await client.chat.completions.create(model="chat", max_tokens=10, messages=[
                        {"role": "user", "content": f"question {i}"}])
                elif kind == 2:
                    stream = await client.chat.completions.create(
                        model="chat", max_tokens=10, stream=True, stream_options={"include_usage": i % 2 == 0},
                        messages=[{"role": "user", "content": f"stream {i}"}])
                    async for _ in stream:
                        if disconnect_every and i % disconnect_every == 0:
                            await stream.close()  # the client walks away mid-stream
                            return "disconnected"
                elif kind == 3:
                    await client.chat.completions.create(model="chat", max_tokens=10, tools=[TOOL], messages=[
                        {"role": "user", "content": f"tool {i}"}])
                else:
                    await client.embeddings.create(model="embed", input=[f"text {i}", "more"])
                return "ok"
            except openai.RateLimitError as e:
                assert e.code == "insufficient_quota", e
                return "refused"

        return await asyncio.gather(*(one(i) for i in range(n)))


def _second_gateway(make_gateway: GatewayFactory, first: GatewayInstance, tenants: dict[str, Any]) -> GatewayInstance:
    """Another process on the same config, state and ledger: the two must behave as one gateway."""
    return make_gateway(ROUTES, tenants, root=first.config_path.parent.parent, env=first.env)


def test_report_equals_mock_usage_times_price(make_gateway: GatewayFactory, backend: dict[str, str], tenant: str,
                                              upstream_log: Any) -> None:
    tenants = {tenant: {}}
    gw = make_gateway(ROUTES, tenants)
    gateways = [gw] if backend["state"] == "memory" else [gw, _second_gateway(make_gateway, gw, tenants)]
    outcomes: list[str] = []
    for g in gateways:
        outcomes += asyncio.run(_traffic(g, tenant, 40))
    assert outcomes.count("ok") == len(outcomes)
    entries = upstream_log()
    assert len(entries) == len(outcomes)
    prompt = sum(_mock_usage(e)[0] for e in entries)
    completion = sum(_mock_usage(e)[1] for e in entries)
    cost = sum(_mock_usage(e)[2] for e in entries)
    report = _wait_report(gw, tenant, len(outcomes))
    totals = report["totals"]
    assert totals["requests"] == len(outcomes)
    assert (totals["prompt_tokens"], totals["completion_tokens"]) == (prompt, completion)
    assert totals["cost_picousd"] == cost  # exact, to the pico-dollar
    assert Decimal(totals["cost_usd"]) == Decimal(cost) / 10**12
    by_route = {r["group"]["route"]: r for r in _report(gw, "--tenant", tenant, "--group-by", "route,model")["rows"]}
    assert set(by_route) == {"chat", "embed"}
    csv_out = subprocess.run([sys.executable, "-m", "gateway", "report", "costs", "--config", str(gw.config_path),
                              "--format", "csv", "--group-by", "day"], capture_output=True, text=True, env=gw.env)
    assert csv_out.returncode == 0 and csv_out.stdout.splitlines()[0].startswith("day,")


# Two processes share a budget only through Redis; the memory store is per process by design.
@pytest.mark.parametrize("backend", ["redis+postgres"], indirect=True)
def test_concurrent_requests_over_two_gateways_never_overspend(make_gateway: GatewayFactory, backend: dict[str, str],
                                                               tenant: str, upstream_log: Any, upstream: Any) -> None:
    budget = 1000
    tenants = {tenant: {"budgets": {"tokens_per_day": budget}}}
    first = make_gateway(ROUTES, tenants)
    second = _second_gateway(make_gateway, first, tenants)
    # slow streams a little, so clients that walk away really leave mid-stream
    httpx.put(upstream.url + "/_mock/faults", json={"chunk_delay_ms": 5})

    async def both() -> list[str]:
        a, b = await asyncio.gather(_traffic(first, tenant, 100, disconnect_every=7),
                                    _traffic(second, tenant, 100, disconnect_every=7))
        return a + b

    try:
        outcomes = asyncio.run(both())
    finally:
        httpx.put(upstream.url + "/_mock/faults", json={})
    served = sum(_mock_usage(e)[0] + _mock_usage(e)[1] for e in upstream_log())
    assert served <= budget, served
    assert outcomes.count("refused") > 0 and served > budget * 0.6
    report = _wait_report(first, tenant, len(outcomes) - outcomes.count("refused"))
    assert report["totals"]["prompt_tokens"] + report["totals"]["completion_tokens"] <= budget


@pytest.mark.parametrize("backend", ["redis+postgres"], indirect=True)  # the drill cuts PostgreSQL
def test_a_ledger_outage_loses_no_envelope_and_fails_no_request(make_gateway: GatewayFactory,
                                                                backend: dict[str, str], tenant: str,
                                                                tmp_path: Path) -> None:
    outage_s = float(os.environ.get("GATEWAY_TEST_OUTAGE_S", "5"))
    proxy = ThreadedTcpProxy("127.0.0.1", PG_PORT)
    proxy.start()
    try:
        database = backend["ledger"].rsplit("/", 1)[1]
        gw = make_gateway(ROUTES, {tenant: {}},
                          storage={"ledger": f"postgresql://postgres@127.0.0.1:{proxy.port}/{database}"})
        client = gw.client(tenant)
        results: list[str] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                try:
                    client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}])
                    results.append("ok")
                except openai.APIError as e:
                    results.append(f"failed: {e}")
                time.sleep(0.01)

        worker = threading.Thread(target=load)
        worker.start()
        time.sleep(1)
        proxy.cut()
        time.sleep(outage_s)
        proxy.restore()
        time.sleep(1)
        stop.set()
        worker.join()
        assert results and all(r == "ok" for r in results), [r for r in results if r != "ok"][:3]
        report = _wait_report(gw, tenant, len(results))
        assert report["totals"]["requests"] == len(results)  # every envelope, exactly once
        print(f"ledger cut for {outage_s:g}s under load: {len(results)} requests answered, "
              f"{report['totals']['requests']} envelopes in PostgreSQL")
    finally:
        proxy.stop()
