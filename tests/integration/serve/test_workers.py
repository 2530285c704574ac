"""Several workers: refused on memory state whenever a limit is set (each worker would keep its own
counters, multiplying every limit); on Redis they share one set of counters."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.gateway import start_gateway, write_config

HELLO = [{"role": "user", "content": "hello"}]
MOCK_ONLY = {"providers": {"mock": {"kind": "mock"}},
             "routes": {"demo": {"targets": [{"provider": "mock", "model": "mock-1"}]}}}
LIMITED = {"acme": {"budgets": {"tokens_per_day": 2000}, "rate_limits": {"requests_per_minute": 40}}}
REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _serve(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "ACME_KEY": "k" * 24})


@pytest.mark.parametrize(("server", "args", "expected"), [
    ({"workers": 2}, [], "gateway.yaml: server.workers: 2 workers on storage.state: memory"),
    ({}, ["--workers", "2"], "gateway.yaml: storage.state: memory state cannot be shared by --workers 2"),
])
def test_memory_state_workers_with_limits_refuse_to_start(tmp_path: Path, server: dict[str, int], args: list[str],
                                                          expected: str) -> None:
    config = write_config(tmp_path, **MOCK_ONLY, server=server,
                          tenants={"acme": {**LIMITED["acme"], "api_keys": ["${ACME_KEY}"]}})
    result = _serve(config, *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "storage.state: redis://..." in lines[0], result.stderr
    assert "listening" not in result.stdout


def test_redis_state_workers_share_the_limits(tmp_path: Path) -> None:
    """The issue's attack: 2 workers, requests_per_minute 40; on Redis the two serve 40, not 2 x 40."""
    state = f"{REDIS_URL}?key_prefix=gwtest-{os.urandom(4).hex()}:"
    gw = start_gateway(tmp_path, **MOCK_ONLY, tenants=LIMITED, storage={"state": state}, args=["--workers", "2"])
    try:
        statuses: list[int] = []
        # A fresh connection per request, so both workers take some.
        deadline = time.monotonic() + 15
        while len(statuses) < 60:
            try:
                r = httpx.post(gw.url + "/v1/chat/completions", json={"model": "demo", "messages": HELLO,
                                                                     "max_tokens": 5},
                               headers={"authorization": f"Bearer {gw.key('acme')}"}, timeout=10)
            except httpx.TransportError:
                assert time.monotonic() < deadline
                continue
            statuses.append(r.status_code)
        assert statuses.count(200) == 40 and statuses.count(429) == 20, statuses
    finally:
        gw.stop()
