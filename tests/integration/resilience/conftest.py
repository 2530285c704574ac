"""Two mock upstreams (a primary and a secondary) and a factory for gateways in front of them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.gateway import GatewayInstance, start_gateway
from tests.support.processes import RunningProcess, start_mock_upstream

BREAKER = {"window_s": 5, "min_requests": 10, "failure_rate": 0.5, "consecutive_failures": 5, "cooldown_s": 1.0,
           "half_open_probes": 1, "success_threshold": 2}


class Upstream:
    """A mock upstream with its fault settings and request log at hand."""

    def __init__(self, proc: RunningProcess) -> None:
        self.proc = proc
        self.url = proc.url
        self.http = httpx.Client(base_url=proc.url, timeout=10)

    def faults(self, **faults: Any) -> None:
        r = self.http.put("/_mock/faults", json=faults)
        assert r.status_code == 200, r.text

    def requests(self) -> list[dict[str, Any]]:
        return [r for r in self.http.get("/_mock/requests").json() if r["path"].startswith("/v1/")]

    def clear(self) -> None:
        self.http.delete("/_mock/requests")


@pytest.fixture(scope="session")
def primary() -> Iterator[Upstream]:
    proc = start_mock_upstream()
    yield Upstream(proc)
    proc.stop()


@pytest.fixture(scope="session")
def secondary() -> Iterator[Upstream]:
    proc = start_mock_upstream()
    yield Upstream(proc)
    proc.stop()


@pytest.fixture
def upstreams(primary: Upstream, secondary: Upstream) -> tuple[Upstream, Upstream]:
    for up in (primary, secondary):
        up.faults()
        up.clear()
    return primary, secondary


GatewayFactory = Callable[..., GatewayInstance]


@pytest.fixture
def make_gateway(tmp_path: Path, upstreams: tuple[Upstream, Upstream]) -> Iterator[GatewayFactory]:
    primary, secondary = upstreams
    started: list[GatewayInstance] = []

    def make(routes: dict[str, Any], *, tenants: dict[str, Any] | None = None, server: dict[str, Any] | None = None,
             resilience: dict[str, Any] | None = None, provider_overrides: dict[str, Any] | None = None
             ) -> GatewayInstance:
        providers = {
            "primary": {"kind": "openai", "base_url": primary.url + "/v1", "timeout_s": 5,
                        **(provider_overrides or {}).get("primary", {})},
            "secondary": {"kind": "openai", "base_url": secondary.url + "/v1", "timeout_s": 5,
                          **(provider_overrides or {}).get("secondary", {})},
        }
        gw = start_gateway(tmp_path / f"gw{len(started)}", providers=providers, routes=routes,
                           tenants=tenants or {"acme": {"routes": ["*"]}}, server=server,
                           extra={"resilience": {"breaker": BREAKER, **(resilience or {})}})
        started.append(gw)
        return gw

    make.started = started  # type: ignore[attr-defined]  # read by the report hook in tests/conftest.py
    yield make
    for gw in started:
        gw.stop()
