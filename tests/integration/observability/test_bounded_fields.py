"""Client-chosen values are bounded wherever the gateway repeats them: logs, envelopes, errors, /metrics.

A hostile client sends a 1 MB model name, a long feature header, a long path and a long content-part
type. It still gets the proper 404/400, and the answer, the access log line, the envelope and
/metrics stay small.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from gateway.errors import CLIENT_VALUE_CHARS
from tests.support.gateway import GatewayInstance, start_gateway
from tests.support.processes import RunningProcess, start_mock_upstream

HELLO = [{"role": "user", "content": "hello"}]
MB = 1_048_576
SMALL_LINE = 3_000  # an access line with every field bounded


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayInstance]:
    upstream: RunningProcess = start_mock_upstream()
    providers: dict[str, Any] = {"up": {"kind": "openai", "base_url": upstream.url + "/v1"},
                                 "claude": {"kind": "anthropic", "base_url": upstream.url}}
    routes: dict[str, Any] = {"chat": {"targets": [{"provider": "up", "model": "gpt-4o-mini"}]},
                              "claude": {"targets": [{"provider": "claude", "model": "claude-haiku-4-5"}]},
                              "embed": {"targets": [{"provider": "up", "model": "text-embedding-3-small"}]}}
    gw = start_gateway(tmp_path_factory.mktemp("gw"), providers=providers, routes=routes,
                       tenants={"acme": {"routes": ["*"]}}, server={"max_body_bytes": 4 * MB})
    yield gw
    gw.stop()
    upstream.stop()


def _line(gw: GatewayInstance, rid: str) -> str:
    gw.wait_log(rid)
    (line,) = [ln for ln in gw.process.output().splitlines()
               if '"gateway.access"' in ln and f'"request_id":"{rid}"' in ln]
    return line


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings"])
def test_a_megabyte_model_name_is_a_small_404_and_a_small_log_line(gateway: GatewayInstance, path: str) -> None:
    with gateway.http() as http:
        metrics_before = len(http.get("/metrics").text)
        rid = "big-model" + path.replace("/", "-")
        body = {"model": "m" * MB, "messages": HELLO, "input": "hi"}
        r = http.post(path, json=body, headers={"x-request-id": rid})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert len(r.content) < 1_000
        line = _line(gateway, rid)
        assert len(line) < SMALL_LINE and '"model":"mmmm' in line
        assert len(http.get("/metrics").text) - metrics_before < 2_000


def test_a_long_feature_header_and_path_are_bounded(gateway: GatewayInstance) -> None:
    with gateway.http() as http:
        r = http.post("/v1/chat/completions", json={"model": "chat", "messages": HELLO},
                      headers={"x-request-id": "big-feature", "x-gateway-feature": "f" * 8_000})
        assert r.status_code == 200
        assert len(_line(gateway, "big-feature")) < SMALL_LINE
        assert len(gateway.wait_envelope("big-feature")["feature"]) <= CLIENT_VALUE_CHARS
        long_path = "/v1/" + "p" * 8_000
        r = http.get(long_path, headers={"x-request-id": "big-path"})
        assert r.status_code == 404 and len(r.content) < 1_000
        assert len(_line(gateway, "big-path")) < SMALL_LINE
        r = http.get("/v1/models/" + "m" * 8_000, headers={"x-request-id": "big-model-id"})
        assert r.status_code == 404 and len(r.content) < 1_000
        assert len(_line(gateway, "big-model-id")) < SMALL_LINE


def test_an_error_quoting_a_client_value_is_bounded(gateway: GatewayInstance) -> None:
    part = {"type": "x" * MB, "text": "hi"}
    with gateway.http() as http:
        r = http.post("/v1/chat/completions", headers={"x-request-id": "big-part"},
                      json={"model": "claude", "messages": [{"role": "user", "content": [part]}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content[0].type"
    assert len(r.content) < 1_000
    assert len(_line(gateway, "big-part")) < SMALL_LINE
