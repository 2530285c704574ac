"""Real mock-upstream processes on loopback, shared by this directory's tests."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.processes import RunningProcess, start_mock_upstream

API_KEY = "sk-mock-right-key-0123456789"


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningProcess]:
    """A mock with no faults configured; tests force theirs per request."""
    proc = start_mock_upstream()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def api_key() -> str:
    return API_KEY


@pytest.fixture(scope="module")
def keyed(api_key: str) -> Iterator[RunningProcess]:
    """A mock that demands `api_key`."""
    proc = start_mock_upstream("--api-key", api_key)
    yield proc
    proc.stop()


@pytest.fixture
def http(mock: RunningProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mock.url, timeout=10) as client:
        yield client
