"""Suite-wide: when a test fails, show what the gateways it started printed (their log lines say
what happened inside)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.gateway import GatewayInstance


def _gateways(item: pytest.Item) -> list[GatewayInstance]:
    found: list[GatewayInstance] = []
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, GatewayInstance):
            found.append(value)
        found += [g for g in getattr(value, "started", []) if isinstance(g, GatewayInstance)]  # factories
    return found


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for i, gw in enumerate(_gateways(item)):
            report.sections.append((f"gateway {i} output (tail)", gw.process.output()[-5000:]))
    return report
