from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from gateway.limits.estimate import estimate_embeddings, estimate_prompt
from gateway.limits.pricing import Pricing, picousd_to_usd, usd_to_picousd
from gateway.limits.tokens import count_messages

PRICING = Pricing.model_validate({"prices": {
    "openai/gpt-4o-mini": {"input": 0.15, "cached_input": 0.075, "output": 0.6},
    "claude/haiku": {"input": "0.8", "output": "4"},
}})
HELLO = [{"role": "user", "content": "hello"}]


def test_costs_are_exact_integers_in_pico_dollars() -> None:
    # 1,000 prompt tokens of which 400 cached, 250 completion tokens
    cost = PRICING.cost_picousd("openai", "gpt-4o-mini", 1000, 250, cached_tokens=400)
    assert cost == 600 * 150_000 + 400 * 75_000 + 250 * 600_000
    assert picousd_to_usd(cost) == Decimal("0.000270000000")
    assert PRICING.cost_picousd("claude", "haiku", 10, 10) == 10 * 800_000 + 10 * 4_000_000  # no cached price: input
    assert PRICING.cost_picousd("nobody", "x", 10, 10) == 0
    assert usd_to_picousd(Decimal("0.000001")) == 1_000_000
    # a float from YAML is read by its text, not its binary approximation
    assert PRICING.prices["openai/gpt-4o-mini"].input == Decimal("0.15")


def test_prices_with_more_than_six_decimals_are_refused() -> None:
    with pytest.raises(ValidationError):
        Pricing.model_validate({"prices": {"a/b": {"input": "0.0000001", "output": 1}}})
    with pytest.raises(ValidationError):
        Pricing.model_validate({"prices": {"a/b": {"input": 1, "output": 1, "extra": 1}}})


def test_prompt_estimates_per_target_family() -> None:
    exact = count_messages(HELLO, "gpt-4o")
    assert estimate_prompt({"messages": HELLO}, [("openai", "gpt-4o-mini")], 0.1) == exact
    # another tokenizer: the cl100k count raised by the margin; the route takes the largest
    other = estimate_prompt({"messages": HELLO}, [("openai", "gpt-4o-mini"), ("anthropic", "claude")], 0.5)
    assert other >= exact and other == -(-count_messages(HELLO, "gpt-4") * 3 // 2)
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    assert estimate_prompt({"messages": HELLO, "tools": tools}, [("openai", "gpt-4o")], 0) > exact
    assert estimate_embeddings({"input": ["a b", "c"]}, "text-embedding-3-small") >= 2
    assert estimate_embeddings({"input": [1, 2, 3]}, "text-embedding-3-small") == 3
