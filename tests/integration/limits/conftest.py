"""Gateways on either storage pair: memory state + SQLite ledger, or Redis state + PostgreSQL ledger."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.gateway import GatewayInstance, start_gateway
from tests.support.pg import create_database, drop_database, postgres_url
from tests.support.processes import RunningProcess, start_mock_upstream

REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PRICE = {"input": "0.15", "cached_input": "0.075", "output": "0.60"}


@pytest.fixture(scope="session")
def upstream() -> Iterator[RunningProcess]:
    proc = start_mock_upstream()
    yield proc
    proc.stop()


@pytest.fixture(params=["memory+sqlite", "redis+postgres"])
def backend(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    if request.param == "memory+sqlite":
        yield {"state": "memory", "ledger": "sqlite:///../ledger.db"}
        return
    name = asyncio.run(create_database())
    try:
        # a key prefix of its own: Redis is shared between runs, and route counters are not per tenant
        yield {"state": f"{REDIS_URL}?key_prefix=gwtest-{os.urandom(4).hex()}:", "ledger": postgres_url(name)}
    finally:
        asyncio.run(drop_database(name))


GatewayFactory = Callable[..., GatewayInstance]


@pytest.fixture
def make_gateway(tmp_path: Path, upstream: RunningProcess, backend: dict[str, str]) -> Iterator[GatewayFactory]:
    started: list[GatewayInstance] = []

    def make(routes: dict[str, Any], tenants: dict[str, Any], *, storage: dict[str, Any] | None = None,
             root: Path | None = None, env: dict[str, str] | None = None, **extra: Any) -> GatewayInstance:
        root = root or tmp_path / f"gw{len(started)}"
        providers = {"up": {"kind": "openai", "base_url": upstream.url + "/v1", "timeout_s": 10}}
        (root / "config").mkdir(parents=True, exist_ok=True)
        (root / "config" / "pricing.yaml").write_text(
            "prices:\n  up/gpt-4o-mini: {input: 0.15, cached_input: 0.075, output: 0.60}\n"
            "  up/text-embedding-3-small: {input: 0.02, output: 0}\n")
        gw = start_gateway(root, providers=providers, routes=routes, tenants=tenants, env=env,
                           storage={**backend, **(storage or {})}, extra=extra or None)
        started.append(gw)
        return gw

    make.started = started  # type: ignore[attr-defined]  # read by the report hook in tests/conftest.py
    yield make
    for gw in started:
        gw.stop()


@pytest.fixture
def upstream_log(upstream: RunningProcess) -> Callable[[], list[dict[str, Any]]]:
    httpx.delete(upstream.url + "/_mock/requests")
    return lambda: [r for r in httpx.get(upstream.url + "/_mock/requests").json() if r["path"].startswith("/v1/")]


@pytest.fixture
def tenant() -> str:
    """A fresh tenant name per test: Redis is shared, so counters must not collide between runs."""
    return "t" + os.urandom(4).hex()
