"""What a provider says reaches the client, the access log and the ledger scrubbed and bounded.

The real mock upstream is made to answer as a hostile or broken provider might: error bodies whose
message, param and code carry the gateway's own provider key, a bearer token, another API key and a
huge value; an error event in the middle of a stream; a served `model` name made of the same.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from gateway.errors import UPSTREAM_FIELD_CHARS, UPSTREAM_TEXT_CHARS
from tests.e2e.conftest import UPSTREAM_KEY
from tests.support.gateway import GatewayInstance

BEARER = "Bearer tok.abc123-xyz789"
OTHER_KEY = "sk-ant-api03-leakedleakedleaked"
HUGE = "word " * 4000  # 20,000 characters (spaces: not one long token the credential pattern would swallow)
SECRETS = (UPSTREAM_KEY, "tok.abc123-xyz789", "leakedleaked")
# What the gateway adds around a bounded text (a prefix, the truncation mark).
SLACK = 120


def _leaky(tag: str) -> str:
    return f"{tag}: key {UPSTREAM_KEY} auth {BEARER} other {OTHER_KEY} {HUGE}"


def _say(directive: dict[str, Any]) -> list[dict[str, str]]:
    return [{"role": "user", "content": "hi #mock" + orjson.dumps(directive).decode()}]


def _post(gateway: GatewayInstance, body: dict[str, Any], rid: str) -> httpx.Response:
    with gateway.http() as http:
        return http.post("/v1/chat/completions", json=body, headers={"x-request-id": rid})


def _clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked"


def _log_line(gateway: GatewayInstance, rid: str) -> str:
    gateway.wait_log(rid)
    (line,) = [ln for ln in gateway.process.output().splitlines() if f'"request_id":"{rid}"' in ln
               and '"gateway.access"' in ln]
    return line


@pytest.mark.parametrize("status", [400, 404, 422])
@pytest.mark.parametrize("route", ["chat", "azure", "claude"])
def test_upstream_error_fields_are_scrubbed_and_bounded(gateway: GatewayInstance, route: str, status: int) -> None:
    rid = f"scrub-{route}-{status}"
    directive = {"status": status, "message": _leaky("message"), "param": _leaky("param"), "code": _leaky("code")}
    r = _post(gateway, {"model": route, "messages": _say(directive)}, rid)
    assert r.status_code == status
    _clean(r.text)
    err = r.json()["error"]
    assert "[redacted]" in err["message"] and len(err["message"]) <= UPSTREAM_TEXT_CHARS + SLACK
    for field in ("param", "code"):
        assert err[field] is None or len(err[field]) <= UPSTREAM_FIELD_CHARS + SLACK
    if route != "claude":  # Anthropic's errors have no param, and their code is the error type
        assert err["param"].startswith("param: key [redacted]") and err["code"].startswith("code: key [redacted]")
    line = _log_line(gateway, rid)
    _clean(line)
    assert len(line) < 2_000
    _clean(str(gateway.wait_envelope(rid)))


@pytest.mark.parametrize("route", ["chat", "claude"])
def test_an_error_event_mid_stream_is_not_relayed_as_sent(gateway: GatewayInstance, route: str) -> None:
    rid = f"scrub-event-{route}"
    directive = {"fault": "error:3", "message": _leaky("event"), "param": _leaky("param"), "code": _leaky("code")}
    with gateway.http() as http, http.stream("POST", "/v1/chat/completions", headers={"x-request-id": rid},
                                             json={"model": route, "messages": _say(directive), "stream": True}) as r:
        assert r.status_code == 200
        raw = r.read().decode()
    _clean(raw)
    events = [orjson.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]
    assert "[DONE]" not in raw and "error" in events[-1] and len(events) >= 2
    err = events[-1]["error"]
    assert "[redacted]" in err["message"] and len(err["message"]) <= UPSTREAM_TEXT_CHARS + SLACK
    assert err["code"] == "upstream_error" and err["param"] is None
    assert len(raw) < 4_000  # the event was bounded, not 20,000 characters of it
    line = _log_line(gateway, rid)
    _clean(line)
    assert len(line) < 2_000


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("route", ["chat", "claude"])
def test_the_served_model_name_is_scrubbed_and_bounded(gateway: GatewayInstance, route: str, stream: bool) -> None:
    rid = f"scrub-model-{route}-{stream}"
    served = f"gpt-{UPSTREAM_KEY} {BEARER} {HUGE}"
    r = _post(gateway, {"model": route, "messages": _say({"model": served}), "stream": stream}, rid)
    assert r.status_code == 200
    if route == "claude":  # translated by the gateway: the client sees the scrubbed name too (the answer's
        # text quotes the directive, so only the model fields are looked at)
        answers = ([orjson.loads(ln[6:]) for ln in r.text.splitlines() if ln.startswith("data: {")] if stream
                   else [r.json()])
        for answer in answers:
            _clean(answer["model"])
            assert len(answer["model"]) <= UPSTREAM_FIELD_CHARS + SLACK
    line = _log_line(gateway, rid)
    _clean(line)
    assert len(line) < 2_000
    record = orjson.loads(line)
    assert record["model_served"].startswith("gpt-[redacted] [redacted]")
    assert len(record["model_served"]) <= UPSTREAM_FIELD_CHARS + SLACK
    envelope = gateway.wait_envelope(rid)
    assert envelope["model_served"] == record["model_served"]
