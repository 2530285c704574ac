"""One mock upstream and one gateway for the end-to-end suite, both real processes on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.gateway import GatewayInstance, start_gateway
from tests.support.processes import RunningProcess, free_port, start_mock_upstream

UPSTREAM_KEY = "sk-upstream-secret-0123456789abcdef"


@pytest.fixture(scope="session")
def upstream() -> Iterator[RunningProcess]:
    proc = start_mock_upstream()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def locked_upstream() -> Iterator[RunningProcess]:
    """A mock that demands a key the gateway does not have: its 401 quotes part of the key."""
    proc = start_mock_upstream("--api-key", "sk-the-right-key-0000000000")
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: RunningProcess,
            locked_upstream: RunningProcess) -> Iterator[GatewayInstance]:
    base = upstream.url
    providers: dict[str, Any] = {
        "up": {"kind": "openai", "base_url": base + "/v1", "api_key": "${UPSTREAM_KEY}", "timeout_s": 5},
        "claude": {"kind": "anthropic", "base_url": base, "api_key": "${UPSTREAM_KEY}", "timeout_s": 5},
        "azure": {"kind": "azure-openai", "base_url": base, "api_key": "${UPSTREAM_KEY}",
                  "api_version": "2024-10-21", "timeout_s": 5},
        "mock": {"kind": "mock"},
        "impatient": {"kind": "openai", "base_url": base + "/v1", "timeout_s": 1},
        "locked": {"kind": "openai", "base_url": locked_upstream.url + "/v1", "api_key": "${UPSTREAM_KEY}"},
        "dead": {"kind": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1", "timeout_s": 2},
    }
    routes: dict[str, Any] = {
        # one attempt: these tests look at how each upstream error reaches the client
        "chat": {"targets": [{"provider": "up", "model": "gpt-4o-mini"}], "retries": 0},
        "claude": {"targets": [{"provider": "claude", "model": "claude-3-5-haiku-latest"}]},
        "azure": {"targets": [{"provider": "azure", "model": "my-deployment"}]},
        "demo": {"targets": [{"provider": "mock", "model": "mock-1"}]},
        "impatient": {"targets": [{"provider": "impatient", "model": "gpt-4o-mini"}]},
        "locked": {"targets": [{"provider": "locked", "model": "gpt-4o-mini"}]},
        "capped": {"targets": [{"provider": "up", "model": "gpt-4o-mini"}], "max_tokens": 3},
        "failover": {"targets": [{"provider": "dead", "model": "gpt-4o-mini"},
                                 {"provider": "up", "model": "gpt-4o-mini"}]},
        "embed": {"targets": [{"provider": "up", "model": "text-embedding-3-small"}]},
    }
    tenants = {"acme": {"routes": ["*"]}, "limited": {"routes": ["demo"]}}
    gw = start_gateway(tmp_path_factory.mktemp("gw"), providers=providers, routes=routes, tenants=tenants,
                       server={"max_body_bytes": 65536}, env={"UPSTREAM_KEY": UPSTREAM_KEY},
                       # these tests provoke upstream errors on purpose: keep breakers out of their way
                       extra={"resilience": {"breaker": {"consecutive_failures": 10_000, "min_requests": 10_000}}})
    yield gw
    gw.stop()


@pytest.fixture
def upstream_log(upstream: RunningProcess) -> Iterator[Any]:
    """Clears the mock's request log, and gives a function that reads it."""
    httpx.delete(upstream.url + "/_mock/requests")

    def read() -> list[dict[str, Any]]:
        return httpx.get(upstream.url + "/_mock/requests").json()

    yield read
