"""Every error the gateway answers, seen through the OpenAI SDK's own exception classes."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.e2e.conftest import UPSTREAM_KEY
from tests.e2e.test_chat import HELLO
from tests.support.gateway import GatewayInstance


def _error(exc: openai.APIStatusError) -> dict:
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert exc.response.headers["x-request-id"]
    return body["error"]


def test_missing_key_is_401(gateway: GatewayInstance) -> None:
    with gateway.http(tenant=None) as http:
        r = http.post("/v1/chat/completions", json={"model": "demo", "messages": HELLO})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_wrong_key_is_401_and_not_echoed(gateway: GatewayInstance) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        gateway.client(api_key="sk-wrong-key-000000000000").chat.completions.create(model="demo", messages=HELLO)
    err = _error(info.value)
    assert err["code"] == "invalid_api_key" and "sk-wrong" not in err["message"]


def test_tenant_not_allowed_on_route_is_403_and_logged(gateway: GatewayInstance) -> None:
    with pytest.raises(openai.PermissionDeniedError) as info:
        gateway.client("limited").chat.completions.create(
            model="chat", messages=HELLO, extra_headers={"x-request-id": "denied-1"})
    assert _error(info.value)["code"] == "permission_denied"
    gateway.wait_log("denied-1")
    denials = [r for r in gateway.log_lines() if r.get("logger") == "gateway.authz"
               and r.get("request_id") == "denied-1"]
    assert denials and denials[0]["subject"] == "tenant:limited"
    assert denials[0]["action"] == "chat.create" and denials[0]["resource"] == "route:chat"


def test_unknown_route_is_404_model_not_found(gateway: GatewayInstance) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        gateway.client().chat.completions.create(model="no-such-route", messages=HELLO)
    err = _error(info.value)
    assert err["code"] == "model_not_found" and err["param"] == "model"


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": HELLO}, "model"),
    ({"model": 42, "messages": HELLO}, "model"),
    ({"model": "demo"}, "messages"),
    ({"model": "demo", "messages": "hi"}, "messages"),
    ({"model": "demo", "messages": []}, "messages"),
    ({"model": "demo", "messages": ["hi"]}, "messages[0]"),
    ({"model": "demo", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"model": "demo", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": "demo", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"model": "demo", "messages": HELLO, "stream": "yes"}, "stream"),
    ({"model": "demo", "messages": HELLO, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"model": "demo", "messages": HELLO, "max_tokens": 0}, "max_tokens"),
    ({"model": "demo", "messages": HELLO, "max_tokens": "many"}, "max_tokens"),
    ({"model": "demo", "messages": HELLO, "temperature": 3}, "temperature"),
    ({"model": "demo", "messages": HELLO, "top_p": -1}, "top_p"),
    ({"model": "demo", "messages": HELLO, "n": 0}, "n"),
    ({"model": "demo", "messages": HELLO, "tools": [{"type": "function"}]}, "tools[0].function.name"),
    ({"model": "demo", "messages": HELLO, "tools": {}}, "tools"),
])
def test_bad_body_is_400_naming_the_parameter(gateway: GatewayInstance, body: dict, param: str) -> None:
    with gateway.http() as http:
        r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error"
    if "model" in body and "messages" in body:  # the SDK itself refuses calls without them
        with pytest.raises(openai.BadRequestError) as info:
            gateway.client().chat.completions.create(**body)
        assert _error(info.value)["param"] == param


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b'"a string"', b"\xff\xfe", b"[" * 5000 + b"]" * 5000,
                                 b'{"model": "demo", "messages": [' + b"1," * 10 + b"}"])
def test_bad_json_is_400(gateway: GatewayInstance, raw: bytes) -> None:
    with gateway.http() as http:
        r = http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_body_over_the_limit_is_413_and_the_connection_survives(gateway: GatewayInstance) -> None:
    big = [{"role": "user", "content": "x" * 70_000}]
    with pytest.raises(openai.APIStatusError) as info:
        gateway.client().chat.completions.create(model="demo", messages=big)
    assert info.value.status_code == 413 and _error(info.value)["code"] == "request_too_large"
    # chunked upload without a content-length: counted as it arrives
    def chunks():
        yield b'{"model": "demo", "messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"y" * 8192
        yield b'"}]}'
    with gateway.http() as http:
        r = http.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        # the same keep-alive connection still serves
        assert http.get("/v1/models").status_code == 200


def test_unknown_path_and_wrong_method_are_openai_errors(gateway: GatewayInstance) -> None:
    with gateway.http() as http:
        r = http.get("/v1/nothing-here")
        assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
        r = http.get("/v1/chat/completions")
        assert r.status_code == 405 and "error" in r.json()


def test_upstream_429_passes_retry_after(gateway: GatewayInstance) -> None:
    content = 'slow down #mock{"status": 429, "retry_after": 7}'
    with pytest.raises(openai.RateLimitError) as info:
        gateway.client().chat.completions.create(model="chat", messages=[{"role": "user", "content": content}])
    assert info.value.response.headers["retry-after"] == "7"
    assert _error(info.value)["code"] == "upstream_rate_limited"


@pytest.mark.parametrize("route", ["chat", "claude"])
def test_upstream_5xx_is_502(gateway: GatewayInstance, route: str) -> None:
    content = 'break #mock{"status": 503}'
    with pytest.raises(openai.InternalServerError) as info:
        gateway.client().chat.completions.create(model=route, messages=[{"role": "user", "content": content}])
    assert info.value.status_code == 502


def test_upstream_timeout_is_504(gateway: GatewayInstance) -> None:
    content = 'wait #mock{"fault": "hang"}'
    with pytest.raises(openai.InternalServerError) as info:
        gateway.client().chat.completions.create(model="impatient", messages=[{"role": "user", "content": content}])
    assert info.value.status_code == 504 and _error(info.value)["code"] == "upstream_timeout"


def test_upstream_malformed_body_is_502(gateway: GatewayInstance) -> None:
    content = 'garble #mock{"fault": "malformed"}'
    with pytest.raises(openai.InternalServerError) as info:
        gateway.client().chat.completions.create(model="chat", messages=[{"role": "user", "content": content}])
    assert info.value.status_code == 502


def test_upstream_reset_is_502(gateway: GatewayInstance) -> None:
    content = 'drop #mock{"fault": "reset"}'
    with pytest.raises(openai.InternalServerError) as info:
        gateway.client().chat.completions.create(model="chat", messages=[{"role": "user", "content": content}])
    assert info.value.status_code == 502 and _error(info.value)["code"] == "upstream_unavailable"


def test_upstream_400_is_passed_on_not_retried(gateway: GatewayInstance, upstream_log) -> None:
    content = 'reject #mock{"status": 400}'
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client().chat.completions.create(model="chat", messages=[{"role": "user", "content": content}])
    assert _error(info.value)["code"] == "upstream_rejected"
    assert len(upstream_log()) == 1


def test_provider_credentials_never_leak(gateway: GatewayInstance) -> None:
    """The locked upstream answers 401 quoting part of the key it was given."""
    with pytest.raises(openai.InternalServerError) as info:
        gateway.client().chat.completions.create(model="locked", messages=HELLO)
    text = info.value.response.text
    assert info.value.status_code == 502 and _error(info.value)["code"] == "upstream_auth_failed"
    assert UPSTREAM_KEY not in text and UPSTREAM_KEY[:8] not in text and "sk-" not in text
    assert UPSTREAM_KEY not in gateway.process.output()


def test_no_secret_in_any_log_line(gateway: GatewayInstance) -> None:
    gateway.client().chat.completions.create(model="chat", messages=HELLO)
    with pytest.raises(openai.AuthenticationError):
        gateway.client(api_key="sk-wrong-key-000000000000").chat.completions.create(model="demo", messages=HELLO)
    output = gateway.process.output()
    for secret in (UPSTREAM_KEY, gateway.key("acme"), gateway.key("limited"), gateway.admin_key,
                   "sk-wrong-key-000000000000"):
        assert secret not in output


def test_nothing_is_a_500_or_a_dropped_connection(gateway: GatewayInstance) -> None:
    """A volley of odd requests: each gets a well-formed 4xx on a connection that stays usable."""
    odd = [
        ("POST", "/v1/chat/completions", {"content-type": "text/plain"}, b"hello"),
        ("POST", "/v1/chat/completions", {}, b'{"model": null, "messages": null}'),
        ("POST", "/v1/chat/completions", {}, b'{"model": "demo", "messages": [{"role": "user", "content": [{}]}],'
                                             b' "tools": [null]}'),
        ("POST", "/v1/embeddings", {}, b'{"model": "embed", "input": [[]]}'),
        ("POST", "/v1/embeddings", {}, b'{"model": "embed"}'),
        ("POST", "/v1/embeddings", {}, b'{"model": "embed", "input": "x", "encoding_format": "hex"}'),
        ("GET", "/v1/models/%00", {}, b""),
        ("PUT", "/v1/models", {}, b""),
        ("POST", "/admin/keys", {}, b"{}"),
    ]
    with gateway.http() as http:
        for method, path, headers, body in odd:
            r = http.request(method, path, headers=headers, content=body)
            assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
            assert "error" in r.json()
        assert http.get("/healthz").status_code == 200
    with httpx.Client(base_url=gateway.url) as raw_client:
        r = raw_client.post("/v1/chat/completions", headers={"authorization": "Basic abc"}, content=b"{}")
        assert r.status_code == 401
