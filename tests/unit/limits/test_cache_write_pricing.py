"""Cache-write prices: defaults by the provider's rule, exact integer costs, and the reservation's bound.

Anthropic bills prompt tokens written into its prompt cache at 1.25x the input price (5-minute
cache) or 2x (1-hour cache); OpenAI-family providers bill no write premium.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.limits.plan import build_plan
from gateway.limits.pricing import Pricing
from gateway.providers.base import Usage
from gateway.settings import ConfigError, load_settings

REPO = Path(__file__).resolve().parents[3]
KINDS = {"claude": "anthropic", "openai": "openai", "azure": "azure-openai", "mock": "mock"}


def pricing(prices: dict[str, dict[str, object]], kinds: dict[str, str] = KINDS) -> Pricing:
    return Pricing.model_validate({"prices": prices}).for_providers(kinds)


def test_anthropic_writes_default_to_one_and_a_quarter_and_twice_the_input_price() -> None:
    p = pricing({"claude/haiku": {"input": "0.8", "cached_input": "0.08", "output": 4}})
    # (input, cached input, output, cache write 5 min, cache write 1 h), pico-dollars per token
    assert p.pico_for("claude", "haiku") == (800_000, 80_000, 4_000_000, 1_000_000, 1_600_000)


@pytest.mark.parametrize("provider", ["openai", "azure", "mock"])
def test_openai_family_targets_have_no_write_premium(provider: str) -> None:
    p = pricing({f"{provider}/m": {"input": "0.15", "cached_input": "0.075", "output": "0.6"}})
    assert p.pico_for(provider, "m") == (150_000, 75_000, 600_000, 150_000, 150_000)


def test_explicit_write_prices_win_over_the_defaults() -> None:
    p = pricing({"claude/m": {"input": 3, "output": 15, "cache_write": "3.75", "cache_write_1h": "6.000001"},
                 "openai/m": {"input": 1, "output": 1, "cache_write": 2}})
    assert p.pico_for("claude", "m") == (3_000_000, 3_000_000, 15_000_000, 3_750_000, 6_000_001)
    assert p.pico_for("openai", "m")[3:] == (2_000_000, 1_000_000)


def test_without_provider_kinds_there_is_no_premium() -> None:
    p = Pricing.model_validate({"prices": {"claude/m": {"input": 1, "output": 1}}})
    assert p.pico_for("claude", "m")[3:] == (1_000_000, 1_000_000)


def test_defaults_are_exact_or_rounded_up_to_the_next_pico_dollar() -> None:
    """A price has at most six decimals, so one token costs k whole pico-dollars. 2k is exact; 1.25k
    is exact when k is a multiple of 4 (every price with at most four decimals), else rounded up."""
    for k in [*range(0, 2000), 10**12 - 1, 10**12, 123_456_789_123]:
        price = Decimal(k).scaleb(-6)
        (_, _, _, write, write_1h) = pricing({"claude/m": {"input": str(price), "output": 0}}).pico_for("claude", "m")
        exact = Decimal(k) * Decimal("1.25")
        assert write == int(exact.to_integral_value(ROUND_CEILING)), k
        assert write - exact < 1 and (write == exact) == (k % 4 == 0)
        assert write_1h == 2 * k
    assert pricing({"claude/m": {"input": "0.000001", "output": 0}}).pico_for("claude", "m")[3] == 2  # 1.25 -> 2
    assert pricing({"claude/m": {"input": "0.0001", "output": 0}}).pico_for("claude", "m")[3] == 125  # exact


@pytest.mark.parametrize("bad", [{"cache_write": "0.0000001"}, {"cache_write_1h": -1}, {"cache_write_5m": 1}])
def test_write_prices_are_validated_like_the_others(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Pricing.model_validate({"prices": {"claude/m": {"input": 1, "output": 1, **bad}}})


def test_a_call_with_cache_writes_costs_exactly_its_parts() -> None:
    p = pricing({"claude/haiku": {"input": "0.8", "cached_input": "0.08", "output": 4}})
    # 10,000 prompt tokens: 1,000 read from the cache, 3,000 written for 5 minutes, 2,000 for an hour.
    usage = Usage(prompt_tokens=10_000, completion_tokens=100, cached_tokens=1_000, cache_write_tokens=5_000,
                  cache_write_1h_tokens=2_000, reported=True)
    writes = 3_000 * 1_000_000 + 2_000 * 1_600_000
    rest = 4_000 * 800_000 + 1_000 * 80_000 + 100 * 4_000_000
    assert p.cost_parts("claude", "haiku", 10_000, 100, 1_000, 5_000, 2_000) == (rest, writes)
    assert p.usage_picousd("claude", "haiku", usage) == p.cost_picousd("claude", "haiku", 10_000, 100, 1_000, 5_000,
                                                                       2_000) == rest + writes
    # Before: every prompt token that was not a cache read was priced as input.
    assert rest + writes > 9_000 * 800_000 + 1_000 * 80_000 + 100 * 4_000_000


@pytest.mark.parametrize(("args", "expected"), [
    # writes beyond the prompt less its reads are clamped; so is a 1-hour part beyond the writes
    ((100, 0, 30, 500, 0), (30 * 80_000, 70 * 1_000_000)),
    ((100, 0, 0, 50, 80), (50 * 800_000, 50 * 1_600_000)),
    ((100, 0, 200, 50, 50), (100 * 80_000, 0)),
    ((0, 0, 0, 10, 10), (0, 0)),
])
def test_parts_are_clamped_into_what_holds_them(args: tuple[int, ...], expected: tuple[int, int]) -> None:
    p = pricing({"claude/haiku": {"input": "0.8", "cached_input": "0.08", "output": 4}})
    assert p.cost_parts("claude", "haiku", *args) == expected


def test_an_unpriced_target_costs_nothing() -> None:
    assert pricing({}).cost_parts("claude", "x", 10, 10, 0, 10, 10) == (0, 0)


# -- through the config and the limits plan ----------------------------------------------------------


def _bound(prices: tuple[tuple[int, int], ...], prompt: int, completion: int) -> int:
    """What the limits stage reserves in USD: the call's price at the dearest target of the plan."""
    return max(prompt * per_input + completion * per_output for per_input, per_output in prices)


def _settings(tmp_path: Path, prices: str):
    (tmp_path / "config").mkdir()
    (tmp_path / "policies").mkdir()
    path = tmp_path / "config" / "gateway.yaml"
    path.write_text(
        "providers:\n"
        "  claude: {kind: anthropic, base_url: 'http://127.0.0.1:9'}\n"
        "  up: {kind: openai, base_url: 'http://127.0.0.1:9/v1'}\n"
        "routes:\n"
        "  both: {targets: [{provider: up, model: gpt}, {provider: claude, model: haiku}]}\n"
        "  up: {targets: [{provider: up, model: gpt}]}\n")
    (tmp_path / "config" / "pricing.yaml").write_text(prices)
    (tmp_path / "policies" / "tenants.yaml").write_text(
        'tenants: {acme: {routes: ["*"], api_keys: ["${K}"], budgets: {usd_per_day: 10}}}\n')
    return load_settings(path, env={"K": "k" * 20})


PRICES = ("prices:\n  claude/haiku: {input: 0.8, cached_input: 0.08, output: 4}\n"
          "  up/gpt: {input: 2.5, cached_input: 1.25, output: 10}\n")


def test_the_config_gives_each_provider_its_kinds_rule(tmp_path: Path) -> None:
    s = _settings(tmp_path, PRICES)
    assert s.pricing.pico_for("claude", "haiku")[3:] == (1_000_000, 1_600_000)
    assert s.pricing.pico_for("up", "gpt")[3:] == (2_500_000, 2_500_000)


def test_a_bad_write_price_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pricing.yaml: prices.claude/haiku.cache_write_1h"):
        _settings(tmp_path, "prices:\n  claude/haiku: {input: 1, output: 1, cache_write_1h: 0.12345678}\n")


def test_the_reservation_bounds_a_prompt_of_cache_writes(tmp_path: Path) -> None:
    """The attack: a prompt that Anthropic bills entirely as 1-hour writes cost twice what was reserved
    for it when the bound priced prompt tokens at the input price."""
    s = _settings(tmp_path, PRICES)
    plan = build_plan(s, "acme", None, None, "both", s.routes["both"])
    # per target: (dearest prompt-token price, output price), worked out once in the plan
    assert plan.prices == ((2_500_000, 10_000_000), (1_600_000, 4_000_000))
    prompt, completion = 100_000, 1_000
    bound = _bound(plan.prices, prompt, completion)
    for cached, written, written_1h in [(0, 0, 0), (0, prompt, 0), (0, prompt, prompt), (prompt // 2, prompt // 2,
                                                                                         prompt // 4)]:
        for provider, model in (("claude", "haiku"), ("up", "gpt")):
            cost = s.pricing.cost_picousd(provider, model, prompt, completion, cached, written, written_1h)
            assert cost <= bound, (provider, cached, written, written_1h)
    # all 1-hour writes on claude: only the write price makes the bound hold (input alone would not)
    all_1h = s.pricing.cost_picousd("claude", "haiku", prompt, completion, 0, prompt, prompt)
    assert all_1h > prompt * 800_000 + completion * 4_000_000
    claude_only = build_plan(s, "acme", None, None, "both", s.routes["both"]).prices[1:]
    assert _bound(claude_only, prompt, completion) == all_1h
    # a target without a premium keeps its input price as the bound
    assert build_plan(s, "acme", None, None, "up", s.routes["up"]).prices == ((2_500_000, 10_000_000),)
