"""What budgets and rate limits add to a request through a running gateway, end to end.

    .venv/bin/python bench/limits/bench_e2e.py [--requests 3000]

Starts `gateway serve` (1 worker, the in-process mock provider) three times: with no limits,
with a tenant's six counters (day and month token and USD budgets, requests and tokens per
minute) in memory, and the same in Redis on loopback; sends the same chat request one at a
time over a kept-alive connection and prints the client-side latency of each. The differences
are what the limits stage costs a request.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

LIMITS = {"budgets": {"tokens_per_day": 10**12, "tokens_per_month": 10**14, "usd_per_day": 10**5,
                      "usd_per_month": 10**6},
          "rate_limits": {"requests_per_minute": 10**9, "tokens_per_minute": 10**10}}
BODY = {"model": "chat", "max_tokens": 64, "messages": [
    {"role": "system", "content": "You are a helpful support assistant for an online shop."},
    {"role": "user", "content": "Where is my order 12345? It was due yesterday and I need it for a trip."}]}


def _run(root: Path, state: str, tenant: dict[str, object], requests: int) -> list[float]:
    (root / "config").mkdir(parents=True)
    (root / "policies").mkdir()
    (root / "config" / "gateway.yaml").write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1", "port": 0, "log_level": "warning"},
        "storage": {"state": state, "ledger": "sqlite:///../ledger.db"},
        "paths": {"policies": "../policies"},
        "providers": {"mock": {"kind": "mock"}},
        "routes": {"chat": {"targets": [{"provider": "mock", "model": "mock-1"}]}}}))
    (root / "config" / "pricing.yaml").write_text(yaml.safe_dump({
        "prices": {"mock/mock-1": {"input": "0.15", "output": "0.60"}}}))
    key = "sk-bench-" + os.urandom(12).hex()
    (root / "policies" / "tenants.yaml").write_text(yaml.safe_dump({"tenants": {
        "bench" + os.urandom(3).hex(): {**tenant, "api_keys": ["${BENCH_KEY}"]}}}))
    config = str(root / "config" / "gateway.yaml")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", config], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "BENCH_KEY": key})
    try:
        assert proc.stdout is not None
        url = None
        for line in proc.stdout:
            if m := re.search(r"gateway listening on (http://\S+)", line):
                url = m.group(1)
                break
        assert url, "gateway did not start"
        samples = []
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}) as client:
            for i in range(requests + 300):
                started = time.perf_counter()
                r = client.post("/v1/chat/completions", json=BODY)
                elapsed = (time.perf_counter() - started) * 1000
                assert r.status_code == 200, r.text
                if i >= 300:
                    samples.append(elapsed)
        return samples
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    rows = []
    for name, state, tenant in (("no limits", "memory", {}), ("limits, memory", "memory", LIMITS),
                                ("limits, redis", args.redis, LIMITS)):
        with tempfile.TemporaryDirectory() as tmp:
            samples = _run(Path(tmp), state, tenant, args.requests)
        rows.append((name, statistics.median(samples), statistics.quantiles(samples, n=100)[98]))
    base = rows[0][1]
    print(f"{'':<18}{'p50 ms':>10}{'p99 ms':>10}{'p50 added':>12}")
    for name, p50, p99 in rows:
        print(f"{name:<18}{p50:>10.3f}{p99:>10.3f}{p50 - base:>12.3f}")


if __name__ == "__main__":
    main()
