"""Prices per provider model, and exact costs in integer pico-dollars.

Prices are USD per million tokens with at most six decimals, so one token costs a whole number
of pico-dollars (1e-12 USD): costs are integer sums, exact to the last digit, never floats that
drift. Reports show micro-dollars; the exact integer travels with them.

Cache writes: Anthropic bills the prompt tokens it writes into its prompt cache above the input
price (1.25x for the 5-minute cache, 2x for the 1-hour one). `cache_write` and `cache_write_1h`
default from the input price by the provider kind's rule (`WRITE_RULES`; OpenAI-family providers
charge no write premium, so theirs default to the input price). A default is worked out on the
per-token price in pico-dollars: 2x is always exact; 1.25x is exact when that price is a multiple
of 4 pico-dollars (every price with at most four decimals) and is otherwise rounded up to the next
pico-dollar per token, so a default never undercharges (by less than 1 pico-dollar a token).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Context, Decimal
from functools import cached_property
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

if TYPE_CHECKING:
    from gateway.providers.base import Usage

PICO_PER_USD = 10**12
_PICO_CACHE_MAX = 4096
# USD per 1M tokens -> pico-dollars per token.
_PICO_PER_TOKEN = Decimal(10**6)

# Provider kind -> (5-minute, 1-hour) cache-write price as a fraction (numerator, denominator) of
# the input price, for prices the file leaves out. A kind not listed charges no write premium.
WRITE_RULES: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {"anthropic": ((5, 4), (2, 1))}
_NO_PREMIUM = ((1, 1), (1, 1))

# Pico-dollars per token: (input, cached input, output, cache write 5 min, cache write 1 h).
PicoPrice = tuple[int, int, int, int, int]


def _times(pico: int, rule: tuple[int, int]) -> int:
    """pico x rule, rounded up to a whole pico-dollar (exact whenever the product is whole)."""
    num, den = rule
    return -(-pico * num // den)


def exact_decimal(value: Any) -> Any:
    """YAML reads 0.15 as a float; the text is what the operator meant, so go through str."""
    return Decimal(str(value)) if isinstance(value, float) else value


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    input: Decimal = Field(ge=0, decimal_places=6)
    output: Decimal = Field(ge=0, decimal_places=6)
    # Prompt tokens the provider served from its own prompt cache; defaults to the input price.
    cached_input: Decimal | None = Field(None, ge=0, decimal_places=6)
    # Prompt tokens the provider wrote into its prompt cache (5-minute and 1-hour lifetimes);
    # default: the input price times the provider kind's rule (WRITE_RULES).
    cache_write: Decimal | None = Field(None, ge=0, decimal_places=6)
    cache_write_1h: Decimal | None = Field(None, ge=0, decimal_places=6)

    _exact = field_validator("input", "output", "cached_input", "cache_write", "cache_write_1h",
                             mode="before")(exact_decimal)

    def pico(self, kind: str | None = None) -> PicoPrice:
        """Pico-dollars per token (input, cached input, output, cache write, 1-hour cache write), the
        write prices defaulting by the rule of the provider `kind` (None: no write premium)."""
        p_in = int(self.input * _PICO_PER_TOKEN)
        cached = p_in if self.cached_input is None else int(self.cached_input * _PICO_PER_TOKEN)
        rule_5m, rule_1h = WRITE_RULES.get(kind or "", _NO_PREMIUM)
        write = _times(p_in, rule_5m) if self.cache_write is None else int(self.cache_write * _PICO_PER_TOKEN)
        write_1h = _times(p_in, rule_1h) if self.cache_write_1h is None else int(self.cache_write_1h * _PICO_PER_TOKEN)
        return p_in, cached, int(self.output * _PICO_PER_TOKEN), write, write_1h


class Pricing(BaseModel):
    """config/pricing.yaml: `prices: {provider/model: {input, cached_input, output, cache_write,
    cache_write_1h}}`. The provider kinds (for the write prices' defaults) come from gateway.yaml
    through `for_providers`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prices: dict[str, Price] = Field(default_factory=dict)
    # provider name -> kind; read only when a (provider, model) is first priced.
    _kinds: dict[str, str] = PrivateAttr(default_factory=dict)

    def for_providers(self, kinds: Mapping[str, str]) -> Pricing:
        """These prices for providers of these kinds (provider name -> kind, as in gateway.yaml)."""
        out = Pricing(prices=self.prices)
        out._kinds = dict(kinds)
        return out

    def price_for(self, provider: str, model: str) -> Price | None:
        return self.prices.get(f"{provider}/{model}")

    def pico_for(self, provider: str, model: str) -> PicoPrice | None:
        """Pico-dollars per token (see Price.pico); None without a price."""
        cache = self.pico_cache
        key = (provider, model)
        try:
            return cache[key]
        except KeyError:
            price = self.price_for(provider, model)
            pico = None if price is None else price.pico(self._kinds.get(provider))
            if len(cache) < _PICO_CACHE_MAX:
                cache[key] = pico
            return pico

    @cached_property
    def pico_cache(self) -> dict[tuple[str, str], PicoPrice | None]:
        """(provider, model) -> Price.pico(): a request prices its call up to three times, and each
        pico() is several Decimal products. Keys come from the config's targets (bounded anyway).
        A cached_property, not a pydantic private attribute: those are read through __getattr__."""
        return {}

    def cost_picousd(self, provider: str, model: str, prompt_tokens: int, completion_tokens: int,
                     cached_tokens: int = 0, cache_write_tokens: int = 0, cache_write_1h_tokens: int = 0) -> int:
        """Exact cost of one call; 0 for a target without a price (reported at start-up by the audit)."""
        rest, writes = self.cost_parts(provider, model, prompt_tokens, completion_tokens, cached_tokens,
                                       cache_write_tokens, cache_write_1h_tokens)
        return rest + writes

    def cost_parts(self, provider: str, model: str, prompt_tokens: int, completion_tokens: int,
                   cached_tokens: int = 0, cache_write_tokens: int = 0, cache_write_1h_tokens: int = 0
                   ) -> tuple[int, int]:
        """(cost of everything but cache writes, cost of cache writes) in pico-dollars.

        Cached and cache-write tokens are parts of prompt_tokens (as Usage counts them) and
        cache_write_1h_tokens a part of cache_write_tokens; each part is clamped into what holds
        it, so no report, however odd, prices a token twice or a negative number of them."""
        pico = self.pico_for(provider, model)
        if pico is None:
            return 0, 0
        p_in, p_cached, p_out, p_write, p_write_1h = pico
        cached = min(cached_tokens, prompt_tokens)
        if not cache_write_tokens:  # every call but an Anthropic cache write
            return (prompt_tokens - cached) * p_in + cached * p_cached + completion_tokens * p_out, 0
        written = min(cache_write_tokens, prompt_tokens - cached)
        written_1h = min(cache_write_1h_tokens, written)
        rest = (prompt_tokens - cached - written) * p_in + cached * p_cached + completion_tokens * p_out
        return rest, (written - written_1h) * p_write + written_1h * p_write_1h

    def usage_picousd(self, provider: str, model: str, usage: Usage) -> int:
        """Exact cost of a call's reported usage at this target's prices."""
        return self.cost_picousd(provider, model, usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens,
                                 usage.cache_write_tokens, usage.cache_write_1h_tokens)


# Wide enough for any sum a database returns, so nothing is rounded before we choose to.
_CTX = Context(prec=60, rounding=ROUND_HALF_UP)
_PICO = Decimal(1).scaleb(-12)


def picousd_to_usd(pico: int) -> Decimal:
    """Exact: 1_234_567 -> Decimal('0.000001234567')."""
    return Decimal(pico).scaleb(-12, _CTX).quantize(_PICO, context=_CTX)


def usd_to_picousd(usd: Decimal) -> int:
    return int(usd * PICO_PER_USD)
