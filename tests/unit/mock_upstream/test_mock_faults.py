"""Fault decisions: validated config, seeded reproducible draws, per-request overrides."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from gateway.mock_upstream.faults import DirectiveError, Fault, FaultConfig, FaultInjector, find_directive
from gateway.mock_upstream.shapes import error_body, mask_key, retry_headers


def _openai(text: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}]}


def _kinds(injector: FaultInjector, n: int) -> list[tuple[str | None, int | None]]:
    return [(f.kind, f.status) for f in (injector.decide({}, None, stream=False) for _ in range(n))]


def test_config_is_validated_and_frozen() -> None:
    with pytest.raises(ValidationError):
        FaultConfig(error_rate=1.5)
    with pytest.raises(ValidationError):
        FaultConfig(error_rate=0.6, rate_limit_rate=0.6)
    with pytest.raises(ValidationError):
        FaultConfig(error_statuses=[200])
    with pytest.raises(ValidationError):
        FaultConfig.model_validate({"error_rat": 0.1})
    config = FaultConfig(error_statuses=[502, 503])
    assert config.error_statuses == (502, 503)
    with pytest.raises(ValidationError):
        config.error_rate = 0.5  # type: ignore[misc]


def test_no_faults_by_default() -> None:
    fault = FaultInjector(FaultConfig()).decide({}, _openai("hi"), stream=True)
    assert fault == Fault()
    assert fault.describe() is None


def test_a_seed_replays_the_same_sequence() -> None:
    config = FaultConfig(error_rate=0.2, error_statuses=[500, 503], rate_limit_rate=0.1, reset_rate=0.05,
                         hang_rate=0.05, malformed_rate=0.1, seed=42)
    first, second = _kinds(FaultInjector(config), 500), _kinds(FaultInjector(config), 500)
    assert first == second
    assert first != _kinds(FaultInjector(config.model_copy(update={"seed": 43})), 500)


def test_rates_are_probabilities() -> None:
    config = FaultConfig(error_rate=0.3, error_statuses=[500, 503], rate_limit_rate=0.1, seed=1)
    counts = Counter(_kinds(FaultInjector(config), 4000))
    assert 0.12 < counts[("status", 500)] / 4000 < 0.18
    assert 0.12 < counts[("status", 503)] / 4000 < 0.18
    assert 0.07 < counts[("status", 429)] / 4000 < 0.13
    assert 0.55 < counts[(None, None)] / 4000 < 0.65


def test_rate_limits_carry_retry_after() -> None:
    fault = FaultInjector(FaultConfig(rate_limit_rate=1, retry_after_s=2.5)).decide({}, None, stream=False)
    assert (fault.kind, fault.status, fault.retry_after_s, fault.source) == ("status", 429, 2.5, "random")


def test_latency_and_jitter() -> None:
    injector = FaultInjector(FaultConfig(latency_ms=100, latency_jitter_ms=50, seed=3))
    latencies = [injector.decide({}, None, stream=False).latency_ms for _ in range(200)]
    assert all(100 <= x <= 150 for x in latencies) and len(set(latencies)) > 100
    assert FaultInjector(FaultConfig(latency_ms=5)).decide({}, None, stream=False).describe() == {"latency_ms": 5}


def test_stream_cut_applies_to_streams_only() -> None:
    injector = FaultInjector(FaultConfig(stream_cut_after=3))
    assert injector.decide({}, None, stream=True) == Fault(kind="cut", cut_after=3, source="config")
    assert injector.decide({}, None, stream=False).kind is None


def test_headers_force_a_fault() -> None:
    injector = FaultInjector(FaultConfig())
    fault = injector.decide({"x-mock-status": "503", "x-mock-retry-after": "2"}, None, stream=False)
    assert (fault.kind, fault.status, fault.retry_after_s, fault.source) == ("status", 503, 2.0, "header")
    assert injector.decide({"x-mock-status": "429"}, None, stream=False).retry_after_s == 1.0
    assert injector.decide({"x-mock-fault": "hang"}, None, stream=False).kind == "hang"
    assert injector.decide({"x-mock-fault": "reset"}, None, stream=True).kind == "reset"
    assert injector.decide({"x-mock-fault": "malformed"}, None, stream=True).kind == "malformed"
    cut = injector.decide({"x-mock-fault": "cut:2"}, None, stream=True)
    assert (cut.kind, cut.cut_after) == ("cut", 2)
    assert injector.decide({"x-mock-fault": "cut:2"}, None, stream=False).kind is None
    assert injector.decide({"x-mock-latency-ms": "25"}, None, stream=False).latency_ms == 25
    assert injector.decide({"x-mock-status": "200"}, None, stream=False).kind is None


def test_forced_none_and_latency_keep_or_cancel_the_random_fault() -> None:
    injector = FaultInjector(FaultConfig(error_rate=1))
    assert injector.decide({"x-mock-fault": "none"}, None, stream=False).kind is None
    slow = injector.decide({"x-mock-latency-ms": "10"}, None, stream=False)
    assert (slow.kind, slow.status, slow.latency_ms, slow.source) == ("status", 500, 10, "random")


@pytest.mark.parametrize(
    "body",
    [
        _openai('please fail #mock{"status": 429, "retry_after": 3} thanks'),
        {"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": 'ok #mock{"status": 429, "retry_after": 3}'}]}]},
        # Anthropic: the directive sits in a text block; a later tool-result-only turn has no text.
        {"model": "c", "max_tokens": 5, "messages": [
            {"role": "user", "content": [{"type": "text", "text": '#mock{"status": 429, "retry_after": 3}'}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "x"}]}]},
    ],
)
def test_directive_in_the_last_user_text(body: dict[str, Any]) -> None:
    fault = FaultInjector(FaultConfig()).decide({}, body, stream=False)
    assert (fault.kind, fault.status, fault.retry_after_s, fault.source) == ("status", 429, 3.0, "directive")


def test_directive_wins_over_headers_and_is_validated() -> None:
    injector = FaultInjector(FaultConfig())
    fault = injector.decide({"x-mock-status": "500"}, _openai('#mock{"fault": "cut:1"}'), stream=True)
    assert (fault.kind, fault.cut_after, fault.source) == ("cut", 1, "directive")
    assert find_directive(_openai("no directive here")) is None
    for bad in ('#mock{"status": 429', '#mock{"colour": "red"}', '#mock{"fault": "explode"}',
                '#mock{"status": "soon"}', '#mock{"latency_ms": -1}'):
        with pytest.raises(DirectiveError):
            injector.decide({}, _openai(bad), stream=False)
    with pytest.raises(DirectiveError):
        injector.decide({"x-mock-status": "abc"}, None, stream=False)


def test_a_directive_asks_for_pretty_json_with_or_without_a_fault() -> None:
    injector = FaultInjector(FaultConfig())
    pretty = injector.decide({}, _openai('#mock{"json": "pretty"}'), stream=True)
    assert pretty.pretty and pretty.kind is None and pretty.describe() == {"pretty": True, "source": "directive"}
    cut = injector.decide({}, _openai('#mock{"json": "pretty", "fault": "cut:2"}'), stream=False)
    assert cut.pretty and cut.kind is None  # a plain answer is served whole, still pretty
    assert not injector.decide({}, _openai('#mock{"json": "compact"}'), stream=True).pretty
    for bad in ('#mock{"json": "yaml"}', '#mock{"json": 2}'):
        with pytest.raises(DirectiveError):
            injector.decide({}, _openai(bad), stream=True)


def test_error_shapes_and_retry_headers() -> None:
    assert orjson.loads(error_body("openai", 429))["error"]["code"] == "rate_limit_exceeded"
    assert orjson.loads(error_body("openai", 503))["error"]["type"] == "server_error"
    assert orjson.loads(error_body("azure", 500))["error"]["code"] == "500"
    anthropic = orjson.loads(error_body("anthropic", 529, request_id="req_1"))
    assert anthropic == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"},
                         "request_id": "req_1"}
    assert orjson.loads(error_body("anthropic", 418))["error"]["type"] == "invalid_request_error"
    assert retry_headers(1.2) == {"retry-after": "2", "retry-after-ms": "1200"}
    assert retry_headers(None) == {}
    assert mask_key("sk-abcdefghijklmnopqrstuvwxyz") == "sk-ab***yz"
    assert mask_key("short") == "***"
