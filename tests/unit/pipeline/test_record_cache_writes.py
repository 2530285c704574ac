"""What a call with prompt-cache writes leaves in its envelope: the writes counted and priced apart."""

from __future__ import annotations

from gateway.limits.pricing import Pricing
from gateway.pipeline.context import Call
from gateway.pipeline.record import envelope_of, price_call
from gateway.providers.base import Usage
from gateway.store.envelope_rows import envelope_row_json, values_row_json

PRICING = Pricing.model_validate({"prices": {
    "claude/haiku": {"input": "0.8", "cached_input": "0.08", "output": 4},
    "up/gpt": {"input": "0.15", "output": "0.6"},
}}).for_providers({"claude": "anthropic", "up": "openai"})


def _call(provider: str, model: str, usage: Usage) -> Call:
    call = Call(request_id="r1", method="POST", path="/v1/chat/completions", kind="chat", tenant="acme",
                route="chat", provider=provider, target_model=model, status=200)
    call.usage = usage
    return call


def test_the_envelope_carries_the_writes_and_their_price() -> None:
    usage = Usage(prompt_tokens=5_010, completion_tokens=20, cached_tokens=0, cache_write_tokens=5_000,
                  cache_write_1h_tokens=4_000, reported=True)
    call = _call("claude", "haiku", usage)
    price_call(call, PRICING)
    writes = 1_000 * 1_000_000 + 4_000 * 1_600_000
    assert call.cache_write_picousd == writes
    assert call.cost_picousd == writes + 10 * 800_000 + 20 * 4_000_000
    env = envelope_of(call)
    assert (env.prompt_tokens, env.cache_write_tokens, env.cache_write_1h_tokens) == (5_010, 5_000, 4_000)
    assert (env.cost_picousd, env.cache_write_picousd) == (call.cost_picousd, writes)
    for backend in ("sqlite", "postgresql"):  # the fast row path takes it as it is
        assert values_row_json(env, backend) == envelope_row_json(env._asdict(), backend)


def test_a_call_without_writes_records_zeros() -> None:
    call = _call("up", "gpt", Usage(prompt_tokens=100, completion_tokens=10, reported=True))
    price_call(call, PRICING)
    env = envelope_of(call)
    assert (env.cache_write_tokens, env.cache_write_1h_tokens, env.cache_write_picousd) == (0, 0, 0)
    assert env.cost_picousd == 100 * 150_000 + 10 * 600_000
    call.usage = None
    assert envelope_of(call).cache_write_tokens == 0
