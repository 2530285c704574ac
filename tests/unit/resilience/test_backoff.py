from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from gateway.resilience.backoff import full_jitter, parse_retry_after, retry_after_headers

# -- full_jitter -----------------------------------------------------------------------------


@pytest.mark.parametrize("retry_number", range(8))
def test_full_jitter_stays_within_the_exponential_ceiling(retry_number: int) -> None:
    rng = random.Random(retry_number)
    ceiling = min(10.0, 0.25 * 2**retry_number)
    draws = [full_jitter(retry_number, 0.25, 10.0, rng) for _ in range(2000)]
    assert all(0 <= d < ceiling for d in draws)
    assert max(draws) > 0.95 * ceiling  # the whole range is used, not just its bottom


def test_full_jitter_is_capped() -> None:
    rng = random.Random(1)
    draws = [full_jitter(20, 0.5, 2.0, rng) for _ in range(2000)]
    assert all(0 <= d < 2.0 for d in draws) and max(draws) > 1.9


def test_full_jitter_is_roughly_uniform() -> None:
    rng = random.Random(42)
    n, bins = 20_000, 10
    counts = [0] * bins
    for _ in range(n):
        counts[int(full_jitter(3, 0.125, 100.0, rng) / 1.0 * bins)] += 1  # ceiling 0.125 * 8 = 1.0
    expected = n / bins
    assert all(abs(c - expected) < 0.1 * expected for c in counts), counts
    chi2 = sum((c - expected) ** 2 / expected for c in counts)
    assert chi2 < 27.88  # p = 0.001 with 9 degrees of freedom


def test_full_jitter_mean_is_half_the_ceiling() -> None:
    rng = random.Random(5)
    draws = [full_jitter(2, 1.0, 60.0, rng) for _ in range(20_000)]
    assert sum(draws) / len(draws) == pytest.approx(2.0, rel=0.03)


@pytest.mark.parametrize("retry_number", [63, 64, 1023, 1024, 10_000, 10**100])
def test_full_jitter_large_retry_numbers_do_not_overflow(retry_number: int) -> None:
    rng = random.Random(0)
    for _ in range(100):
        d = full_jitter(retry_number, 0.5, 30.0, rng)
        assert 0 <= d < 30.0 and math.isfinite(d)


def test_full_jitter_is_reproducible_with_a_seed_and_works_without_one() -> None:
    a = [full_jitter(i % 5, 0.1, 5.0, random.Random(9)) for i in range(10)]
    b = [full_jitter(i % 5, 0.1, 5.0, random.Random(9)) for i in range(10)]
    assert a == b
    assert 0 <= full_jitter(3, 0.1, 5.0) < 0.8


def test_full_jitter_zero_base_or_cap_means_no_wait() -> None:
    assert full_jitter(5, 0.0, 10.0) == 0.0
    assert full_jitter(5, 1.0, 0.0) == 0.0


@pytest.mark.parametrize("args", [(-1, 1.0, 1.0), (0, -1.0, 1.0), (0, 1.0, -1.0), (0, float("nan"), 1.0)])
def test_full_jitter_rejects_nonsense(args: tuple[int, float, float]) -> None:
    with pytest.raises(ValueError):
        full_jitter(*args)


# -- parse_retry_after -----------------------------------------------------------------------

NOW = 1_700_000_000.0
DATE = format_datetime(datetime.fromtimestamp(NOW + 30, UTC), usegmt=True)  # "Tue, 14 Nov 2023 22:13:50 GMT"


@pytest.mark.parametrize(("headers", "expected"), [
    ({"retry-after-ms": "1500"}, 1.5),
    ({"retry-after-ms": "250.5"}, 0.2505),
    ({"retry-after-ms": "0"}, 0.0),
    ({"retry-after-ms": "20", "retry-after": "7"}, 0.02),  # ms is preferred
    ({"retry-after-ms": "soon", "retry-after": "7"}, 7.0),  # ...unless it is garbage
    ({"retry-after-ms": "-5", "retry-after": "7"}, 7.0),
    ({"retry-after": "7"}, 7.0),
    ({"retry-after": "1.5"}, 1.5),
    ({"retry-after": " 3 "}, 3.0),
    ({"retry-after": "0"}, 0.0),
    ({"retry-after": DATE}, 30.0),
    ({"retry-after": "Tue, 14 Nov 2023 22:13:50 -0000"}, 30.0),  # a date with no zone is UTC
    ({"retry-after": format_datetime(datetime.fromtimestamp(NOW - 60, UTC), usegmt=True)}, 0.0),  # past: now
    ({}, None),
    ({"content-type": "application/json"}, None),
    ({"retry-after": ""}, None),
    ({"retry-after": "soon"}, None),
    ({"retry-after": "-5"}, None),
    ({"retry-after": "nan"}, None),
    ({"retry-after": "inf"}, None),
    ({"retry-after": "1e400"}, None),
    ({"retry-after": "Wed, 99 Oct 2015 07:28:00 GMT"}, None),
    ({"retry-after": "Mon, 1 Jan 99999 00:00:00 GMT"}, None),
    ({"retry-after-ms": "nan"}, None),
])
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    result = parse_retry_after(headers, now=NOW)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


def test_parse_retry_after_date_defaults_to_the_wall_clock() -> None:
    future = format_datetime(datetime(2999, 1, 1, tzinfo=UTC), usegmt=True)
    result = parse_retry_after({"retry-after": future})
    assert result is not None and result > 365 * 86400


@pytest.mark.parametrize("headers", [
    {"Retry-After": "3"}, {"RETRY-AFTER": "3"}, {"Retry-After-Ms": "3000"}, {"X-Other": "1", "retry-After-MS": "3000"},
])
def test_parse_retry_after_names_are_case_insensitive(headers: dict[str, str]) -> None:
    assert parse_retry_after(headers) == 3.0


def test_parse_retry_after_accepts_real_header_types() -> None:
    import httpx
    from multidict import CIMultiDict
    from starlette.datastructures import Headers

    raw = {"Retry-After-Ms": "250", "Retry-After": "9"}
    for headers in (httpx.Headers(raw), CIMultiDict(raw), Headers(headers=raw)):
        assert parse_retry_after(headers) == 0.25
    assert parse_retry_after(httpx.Headers({"Retry-After": "9"})) == 9.0


# -- retry_after_headers ---------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "after", "after_ms"), [
    (0.2, "1", "200"),
    (1.0, "1", "1000"),
    (1.01, "2", "1010"),
    (59.9996, "60", "60000"),
    (0.0004, "1", "1"),
    (0.0, "1", "1"),
    (-3.0, "1", "1"),
    (float("nan"), "1", "1"),
    (float("inf"), str(365 * 86400), str(365 * 86400 * 1000)),
])
def test_retry_after_headers(seconds: float, after: str, after_ms: str) -> None:
    assert retry_after_headers(seconds) == {"retry-after": after, "retry-after-ms": after_ms}


def test_what_the_gateway_sends_it_can_read_back() -> None:
    for seconds in (0.25, 1.0, 2.5, 17.3):
        assert parse_retry_after(retry_after_headers(seconds)) == pytest.approx(seconds, abs=0.001)
