"""The gateway's HTTP protocol only for the uvicorn it was tested on, uvicorn's own otherwise."""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.http.server_protocol import TESTED_UVICORN, http_protocol, uvicorn_tested
from gateway.http.uvicorn_protocol import GatewayHttpToolsProtocol

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


@pytest.mark.parametrize(("version", "tested"), [
    ("0.54.0", True), ("0.54.7", True), ("0.54", True),
    ("0.53.9", False), ("0.55.0", False), ("1.54.0", False), ("0.5.4", False),
    ("0.54.0rc1", False), ("0.54.0.dev0", False), ("0.54.0+local", False), ("", False), ("unknown", False),
])
def test_the_tested_range_is_releases_of_the_pinned_minor(version: str, tested: bool) -> None:
    assert uvicorn_tested(version) is tested


def test_inside_the_range_the_gateways_protocol_is_chosen_silently(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert http_protocol("0.54.0") is GatewayHttpToolsProtocol
    assert caplog.records == []


def test_outside_it_uvicorns_own_is_chosen_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        chosen = http_protocol("0.55.0")
    assert chosen == "httptools"
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.name == "gateway.server"
    assert "uvicorn 0.55.0 is outside" in record.getMessage() and ">=0.54,<0.55" in record.getMessage()
    # and it is a choice uvicorn itself takes: its own httptools protocol
    config = uvicorn.Config(lambda scope, receive, send: None, http=chosen, log_config=None)
    config.load()
    assert config.http_protocol_class is HttpToolsProtocol


def test_the_installed_uvicorn_is_in_range_and_pyproject_pins_the_same_range() -> None:
    assert uvicorn_tested(uvicorn.__version__), uvicorn.__version__
    assert http_protocol() is GatewayHttpToolsProtocol
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    [pin] = [d for d in dependencies if re.match(r"uvicorn\b", d)]
    (low_major, low_minor), (high_major, high_minor) = TESTED_UVICORN
    assert pin == f"uvicorn>={low_major}.{low_minor},<{high_major}.{high_minor}"
