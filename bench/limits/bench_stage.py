"""What the `limits` stage adds per request: estimate + reserve before the call, settle after.

    .venv/bin/python bench/limits/bench_stage.py [--requests 5000] [--redis redis://127.0.0.1:6379/0]

Runs the real stage (gateway.limits.stage.Limits) on a tenant with day and month token and USD
budgets plus requests- and tokens-per-minute limits (six counters, one atomic reservation),
against the in-process memory store and against Redis on loopback, and prints the median,
p90 and p99 of the time it adds to one request.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import uvloop
import yaml

from gateway.limits.stage import Limits
from gateway.observability.metrics import Metrics
from gateway.pipeline.context import Call
from gateway.providers.base import Usage
from gateway.settings import load_settings
from gateway.store.state.base import state_store_from_url

TENANT = {"budgets": {"tokens_per_day": 10**12, "tokens_per_month": 10**14, "usd_per_day": 10**5,
                      "usd_per_month": 10**6},
          "rate_limits": {"requests_per_minute": 10**9, "tokens_per_minute": 10**10}}
BODY = {"model": "chat", "max_tokens": 64, "messages": [
    {"role": "system", "content": "You are a helpful support assistant for an online shop."},
    {"role": "user", "content": "Where is my order 12345? It was due yesterday and I need it for a trip."}]}


def _settings(root: Path, tenant: str):  # type: ignore[no-untyped-def]
    (root / "config").mkdir()
    (root / "policies").mkdir()
    (root / "config" / "gateway.yaml").write_text(yaml.safe_dump({
        "providers": {"mock": {"kind": "mock"}},
        "routes": {"chat": {"targets": [{"provider": "mock", "model": "mock-1"}]}},
        "paths": {"policies": "../policies"}}))
    (root / "config" / "pricing.yaml").write_text(yaml.safe_dump({
        "prices": {"mock/mock-1": {"input": "0.15", "output": "0.60"}}}))
    (root / "policies" / "tenants.yaml").write_text(yaml.safe_dump({"tenants": {tenant: TENANT}}))
    return load_settings(root / "config" / "gateway.yaml", env={})


async def _measure(url: str, requests: int, tenant: str, root: Path) -> tuple[list[float], list[float]]:
    settings = _settings(root, tenant)
    store = state_store_from_url(url)
    limits = Limits(settings, store, Metrics())
    route = settings.routes["chat"]
    usage = Usage(prompt_tokens=40, completion_tokens=20, reported=True)
    before: list[float] = []
    after: list[float] = []
    try:
        for i in range(requests + 200):
            call = Call(request_id=f"r{i}", method="POST", path="/v1/chat/completions", kind="chat", tenant=tenant,
                        key_id="k", route="chat")
            body = dict(BODY)
            started = time.perf_counter()
            hold = await limits.reserve(call, route, body)
            reserved = time.perf_counter()
            await limits.settle(hold, usage, "mock", "mock-1")
            settled = time.perf_counter()
            if i >= 200:  # warm-up: connection pool, script cache, encoder caches
                before.append((reserved - started) * 1000)
                after.append((settled - reserved) * 1000)
    finally:
        await store.aclose()
    return before, after


def _row(name: str, samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100)
    return f"{name:<28}{statistics.median(samples):>10.3f}{q[89]:>10.3f}{q[98]:>10.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    print(f"limits stage, {args.requests} requests, ms per request; 6 counters in one atomic reservation")
    print("  before the call: prompt estimate + reserve (adds to the client's latency)")
    print("  after the answer: settle (runs once the response is sent; adds no client latency)")
    print(f"{'':<28}{'p50':>10}{'p90':>10}{'p99':>10}")
    for name, url in (("memory (in process)", "memory"), ("redis (loopback)", args.redis)):
        with tempfile.TemporaryDirectory() as tmp:
            # uvloop, as `gateway serve` runs
            before, after = uvloop.run(_measure(url, args.requests, "bench" + os.urandom(4).hex(), Path(tmp)))
        print(_row(f"{name}: before", before))
        print(_row(f"{name}: settle", after))


if __name__ == "__main__":
    main()
