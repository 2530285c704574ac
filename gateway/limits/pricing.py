"""Prices per provider model, and exact costs in integer pico-dollars.

Prices are USD per million tokens with at most six decimals, so one token costs a whole number
of pico-dollars (1e-12 USD): costs are integer sums, exact to the last digit, never floats that
drift. Reports show micro-dollars; the exact integer travels with them.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Context, Decimal
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

PICO_PER_USD = 10**12
_PICO_CACHE_MAX = 4096
# USD per 1M tokens -> pico-dollars per token.
_PICO_PER_TOKEN = Decimal(10**6)


def exact_decimal(value: Any) -> Any:
    """YAML reads 0.15 as a float; the text is what the operator meant, so go through str."""
    return Decimal(str(value)) if isinstance(value, float) else value


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    input: Decimal = Field(ge=0, decimal_places=6)
    output: Decimal = Field(ge=0, decimal_places=6)
    # Prompt tokens the provider served from its own prompt cache; defaults to the input price.
    cached_input: Decimal | None = Field(None, ge=0, decimal_places=6)

    _exact = field_validator("input", "output", "cached_input", mode="before")(exact_decimal)

    def pico(self) -> tuple[int, int, int]:
        """(input, cached input, output) in pico-dollars per token."""
        cached = self.cached_input if self.cached_input is not None else self.input
        return int(self.input * _PICO_PER_TOKEN), int(cached * _PICO_PER_TOKEN), int(self.output * _PICO_PER_TOKEN)


class Pricing(BaseModel):
    """config/pricing.yaml: `prices: {provider/model: {input, cached_input, output}}`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prices: dict[str, Price] = Field(default_factory=dict)

    def price_for(self, provider: str, model: str) -> Price | None:
        return self.prices.get(f"{provider}/{model}")

    def pico_for(self, provider: str, model: str) -> tuple[int, int, int] | None:
        """(input, cached input, output) pico-dollars per token; None without a price."""
        cache = self.pico_cache
        key = (provider, model)
        try:
            return cache[key]
        except KeyError:
            price = self.price_for(provider, model)
            pico = None if price is None else price.pico()
            if len(cache) < _PICO_CACHE_MAX:
                cache[key] = pico
            return pico

    @cached_property
    def pico_cache(self) -> dict[tuple[str, str], tuple[int, int, int] | None]:
        """(provider, model) -> Price.pico(): a request prices its call up to three times, and each
        pico() is three Decimal products. Keys come from the config's targets (bounded anyway).
        A cached_property, not a pydantic private attribute: those are read through __getattr__."""
        return {}

    def cost_picousd(self, provider: str, model: str, prompt_tokens: int, completion_tokens: int,
                     cached_tokens: int = 0) -> int:
        """Exact cost of one call; 0 for a target without a price (reported at start-up by the audit)."""
        pico = self.pico_for(provider, model)
        if pico is None:
            return 0
        p_in, p_cached, p_out = pico
        cached = min(cached_tokens, prompt_tokens)
        return (prompt_tokens - cached) * p_in + cached * p_cached + completion_tokens * p_out


# Wide enough for any sum a database returns, so nothing is rounded before we choose to.
_CTX = Context(prec=60, rounding=ROUND_HALF_UP)
_PICO = Decimal(1).scaleb(-12)


def picousd_to_usd(pico: int) -> Decimal:
    """Exact: 1_234_567 -> Decimal('0.000001234567')."""
    return Decimal(pico).scaleb(-12, _CTX).quantize(_PICO, context=_CTX)


def usd_to_picousd(usd: Decimal) -> int:
    return int(usd * PICO_PER_USD)
