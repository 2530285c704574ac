"""Retry delays: full-jitter backoff, and the Retry-After headers read and sent.

Full jitter (AWS, "Exponential Backoff And Jitter") spreads retries of many clients evenly
over [0, ceiling), so a failing upstream is not hit again by a synchronized wave.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime

# 2.0 ** 1024 overflows a float; any retry number at or past this is far beyond every cap.
_MAX_EXPONENT = 1023
# What retry_after_headers() sends at most: inf would be a bug upstream of it, not a reason to fail a 429.
_MAX_RETRY_AFTER_S = 365 * 86400.0


def full_jitter(retry_number: int, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """A delay drawn uniformly from [0, min(cap_s, base_s * 2**retry_number)); retry_number starts at 0."""
    if retry_number < 0:
        raise ValueError("retry_number must be >= 0")
    if not (base_s >= 0 and cap_s >= 0):  # also refuses NaN
        raise ValueError("base_s and cap_s must be >= 0")
    # base_s * 2.0**1023 may be inf, which min() turns into cap_s; only the power itself can raise.
    ceiling = min(cap_s, base_s * 2.0 ** min(retry_number, _MAX_EXPONENT))
    return (rng or random).random() * ceiling


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """`name` (lower case) from any mapping: case-insensitive ones answer the first get()."""
    value = headers.get(name)
    if value is not None:
        return value
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _non_negative(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    # A negative or infinite delay is not a delay: treat it like garbage, not like "now".
    return value if math.isfinite(value) and value >= 0 else None


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the upstream asks to wait, or None when it does not say (or says nonsense).

    `retry-after-ms` (OpenAI, Azure; float milliseconds) wins when valid; else `retry-after` as
    seconds (int or float) or as an HTTP-date, where a date already past means 0.0. `now` is the
    wall-clock time an HTTP-date is measured against (default time.time()).
    """
    ms = _header(headers, "retry-after-ms")
    if ms is not None:
        value = _non_negative(ms)
        if value is not None:
            return value / 1000.0
    text = _header(headers, "retry-after")
    if text is None:
        return None
    text = text.strip()
    value = _non_negative(text)
    if value is not None:
        return value
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC with no zone information
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_after_headers(seconds: float) -> dict[str, str]:
    """What the gateway sends on its own 429/503: whole seconds rounded up, and milliseconds; each at least 1."""
    if not seconds > 0:  # negative or NaN: "now", which the floor of 1 turns into the shortest wait
        seconds = 0.0
    seconds = min(seconds, _MAX_RETRY_AFTER_S)
    return {"retry-after": str(max(1, math.ceil(seconds))), "retry-after-ms": str(max(1, round(seconds * 1000)))}
