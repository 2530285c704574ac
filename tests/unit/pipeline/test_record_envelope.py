"""envelope_of: what a finished call leaves for the ledger, by name."""

from __future__ import annotations

from gateway.errors import CLIENT_VALUE_CHARS
from gateway.pipeline.context import Attempt, Call
from gateway.pipeline.record import envelope_of
from gateway.providers.base import Usage
from gateway.store.envelope_rows import envelope_row_json, values_row_json


def _served() -> Call:
    call = Call(request_id="r1", method="POST", path="/v1/chat/completions", kind="chat", tenant="acme",
                key_id="k1", route="chat", feature="search", stream=True,
                model_requested="m" * (CLIENT_VALUE_CHARS + 5), provider="up", model_served="gpt-x-2025",
                cost_picousd=123, cache_write_picousd=45, status=200, ttft_ms=7.5,
                request_body='{"q": 1}', response_body='{"a": 2}')
    call.usage = Usage(prompt_tokens=11, completion_tokens=12, cached_tokens=3, cache_write_tokens=2,
                       cache_write_1h_tokens=1, reported=True)
    call.attempts = [Attempt(provider="up", model="gpt-x", status=200, latency_ms=5.0, tokens=23)]
    return call


def test_a_served_call_names_what_it_knows():
    call = _served()
    env = envelope_of(call, latency_ms=12.34567)
    assert env.request_id == "r1" and env.created_at == call.started_at and len(env.envelope_id) == 32
    assert (env.tenant, env.key_id, env.route, env.feature) == ("acme", "k1", "chat", "search")
    assert env.model_requested == "m" * CLIENT_VALUE_CHARS  # what the client chose, bounded
    assert (env.model_served, env.provider, env.status, env.error_type) == ("gpt-x-2025", "up", 200, None)
    assert env.attempts == [a.as_dict() for a in call.attempts]
    assert (env.prompt_tokens, env.completion_tokens, env.cached_tokens) == (11, 12, 3)
    assert (env.cache_write_tokens, env.cache_write_1h_tokens) == (2, 1)
    assert (env.cost_picousd, env.cache_write_picousd) == (123, 45)
    assert (env.latency_ms, env.ttft_ms, env.stream, env.usage_reported) == (12.346, 7.5, True, True)
    assert (env.request_body, env.response_body) == ('{"q": 1}', '{"a": 2}')
    # Stages the call did not meet leave their columns at the defaults.
    assert (env.template_id, env.cache_status, env.cache_saved_tokens, env.safety_flags) == (None, None, 0, None)


def test_the_access_lines_attempts_and_latency_are_taken_as_they_are():
    attempts = [{"provider": "up"}]
    env = envelope_of(_served(), attempts, 1.0)
    assert env.attempts is attempts and env.latency_ms == 1.0


def test_the_request_paths_row_is_the_full_paths_row():
    # A bare call (refused early: no usage, no attempts) and a served one: the values as they are make
    # the row the normalising path makes of the same envelope as a mapping.
    for call in (Call(request_id="r", method="POST", path="/v1/chat/completions"), _served()):
        env = envelope_of(call)
        for backend in ("sqlite", "postgresql"):
            row = values_row_json(env, backend)
            assert row is not None and row == envelope_row_json(env._asdict(), backend)
