"""normalize_envelope: what the writer accepts and the row it makes of it."""

import math
import random
import sys
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from gateway.store.envelope_fields import Envelope
from gateway.store.envelope_rows import (
    created_texts,
    envelope_row_json,
    row_from_json,
    row_json,
    values_row_json,
)
from gateway.store.envelopes import ENVELOPE_KEYS, EnvelopeRejected, normalize_envelope
from gateway.store.schema import envelopes


def test_every_column_but_the_key_is_filled_with_its_default():
    row = normalize_envelope({"envelope_id": "e1", "request_id": "r1", "created_at": 0})
    assert set(row) == set(ENVELOPE_KEYS) == {c.name for c in envelopes.columns} - {"id"}
    assert row["created_at"] == datetime(1970, 1, 1, tzinfo=UTC) and row["day"] == date(1970, 1, 1)
    assert row["prompt_tokens"] == row["cost_picousd"] == row["cache_saved_picousd"] == row["status"] == 0
    assert row["stream"] is False and row["usage_reported"] is False
    assert row["tenant"] is None and row["attempts"] is None and row["latency_ms"] is None


def test_created_at_forms_all_become_aware_utc_and_day_follows_it():
    east = timezone(timedelta(hours=9))
    for value in (
        datetime(2025, 1, 2, 8, 30, tzinfo=east),  # 2025-01-01 23:30 UTC: the UTC day counts
        datetime(2025, 1, 1, 23, 30),  # naive: taken as UTC
        datetime(2025, 1, 1, 23, 30, tzinfo=UTC).timestamp(),
        "2025-01-01T23:30:00+00:00",
        "2025-01-01T23:30:00Z",
    ):
        row = normalize_envelope({"envelope_id": "e", "request_id": "r", "created_at": value, "day": "2099-01-01"})
        assert row["created_at"] == datetime(2025, 1, 1, 23, 30, tzinfo=UTC), value
        assert row["created_at"].utcoffset() == timedelta(0)
        assert row["day"] == date(2025, 1, 1), "day is derived, a given one ignored"


def test_missing_created_at_is_now():
    before = datetime.now(UTC)
    row = normalize_envelope({"envelope_id": "e", "request_id": "r"})
    assert before <= row["created_at"] <= datetime.now(UTC)


def test_values_are_coerced_to_their_column_kinds():
    row = normalize_envelope(
        {
            "envelope_id": "e",
            "request_id": 42,
            "template_version": 3,
            "prompt_tokens": "12",
            "completion_tokens": 7.0,
            "cost_picousd": Decimal("123456789012345678"),
            "cache_saved_picousd": 2**62,
            "latency_ms": "12.5",
            "ttft_ms": float("nan"),
            "stream": 1,
            "usage_reported": "false",
            "attempts": '[{"provider": "p"}]',
            "safety_flags": {"pii": ["email"]},
            "response_body": "a\x00b",
            "unknown_key": "dropped",
        }
    )
    assert row["request_id"] == "42" and row["template_version"] == "3"
    assert row["prompt_tokens"] == 12 and row["completion_tokens"] == 7
    assert row["cost_picousd"] == 123456789012345678 and row["cache_saved_picousd"] == 2**62
    assert row["latency_ms"] == 12.5 and row["ttft_ms"] is None
    assert row["stream"] is True and row["usage_reported"] is False
    assert row["attempts"] == [{"provider": "p"}] and row["safety_flags"] == {"pii": ["email"]}
    assert row["response_body"] == "a\ufffdb"
    assert "unknown_key" not in row


@pytest.mark.parametrize(
    "bad",
    [
        {"request_id": "r"},
        {"envelope_id": "e"},
        {"envelope_id": "e", "request_id": ""},
        {"envelope_id": "e", "request_id": "r", "prompt_tokens": "many"},
        {"envelope_id": "e", "request_id": "r", "prompt_tokens": 2**31},
        {"envelope_id": "e", "request_id": "r", "cost_picousd": 2**63},
        {"envelope_id": "e", "request_id": "r", "cost_picousd": float("inf")},
        {"envelope_id": "e", "request_id": "r", "created_at": "yesterday"},
        {"envelope_id": "e", "request_id": "r", "created_at": [2025]},
        {"envelope_id": "e", "request_id": "r", "latency_ms": "slow"},
    ],
)
def test_what_cannot_become_a_row_is_rejected(bad):
    with pytest.raises(EnvelopeRejected):
        normalize_envelope(bad)


def test_json_values_become_plain_json():
    when = datetime(2025, 1, 1, tzinfo=UTC)
    row = normalize_envelope(
        {"envelope_id": "e", "request_id": "r", "attempts": [{"at": when, "cost": Decimal("0.5"), "tags": {"a"}}]}
    )
    assert row["attempts"] == [{"at": "2025-01-01T00:00:00+00:00", "cost": "0.5", "tags": ["a"]}]


def test_a_queued_row_is_text_of_its_own_size() -> None:
    # orjson's bytes keep the 8 KB buffer they were written into; thousands of rows wait in the queue.
    row = normalize_envelope({"envelope_id": "e1", "request_id": "r1", "created_at": 1_764_460_800.0,
                              "tenant": "acme", "attempts": [{"provider": "p", "status": 200}], "stream": True})
    for backend in ("sqlite", "postgresql"):
        item = row_json(row, backend)
        assert isinstance(item, str) and sys.getsizeof(item) < len(item) + 100
        back = row_from_json(item)
        assert normalize_envelope(back) == row


def _gateway_envelope(**changes: object) -> dict[str, object]:
    env: dict[str, object] = {key: None for key in ENVELOPE_KEYS}
    env.update(envelope_id="0190abc", request_id="req_1", created_at=1_764_460_800.123456, tenant="acme",
               route="chat", model_requested="chat", model_served="gpt-4o-mini", provider="up",
               attempts=[{"provider": "up", "model": "gpt-4o-mini", "status": 200, "latency_ms": 1.5}],
               prompt_tokens=42, completion_tokens=20, cached_tokens=0, cost_picousd=18_000_000, cache_saved_tokens=0,
               cache_saved_picousd=0, latency_ms=1.25, status=200, stream=False, usage_reported=True)
    env.pop("day", None)
    env.update(changes)
    return env


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("changes", [
    {},  # what every request leaves: the one-pass path
    {"ttft_ms": 3.5, "stream": True, "feature": "search", "error_type": "UpstreamTimeout", "status": 504},
    {"model_served": "a\x00b"},  # the rest take the full path, and must end the same
    {"request_body": '{"text": "\\u0000 is a NUL, written out"}'},  # reads like a NUL in the row's JSON
    {"attempts": [{"provider": "p", "error": "bad\x00byte"}]},
    {"status": None, "cost_picousd": None},  # an int column's None is its default, 0
    {"prompt_tokens": True},
    {"prompt_tokens": 2**31 - 1, "cost_picousd": 2**63 - 1},
    {"prompt_tokens": "12", "stream": 1, "latency_ms": "2.5", "created_at": 1_764_460_800},
    {"attempts": '[{"provider": "p"}]', "safety_flags": {"pii": {"email"}}},
    {"created_at": datetime(2025, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))},
    {"latency_ms": float("inf"), "request_body": '{"model": "chat"}'},
])
def test_the_one_pass_row_equals_the_full_path(backend: str, changes: dict[str, object]) -> None:
    env = _gateway_envelope(**changes)
    full = row_json(normalize_envelope(env), backend)
    assert envelope_row_json(env, backend) == full
    # From the Envelope (what every request submits): the same row, or None for the full path.
    named = Envelope(**env)  # type: ignore[arg-type]
    assert values_row_json(named, backend) in (full, None)
    if not changes:
        assert values_row_json(named, backend) == full


@pytest.mark.parametrize("changes", [{"prompt_tokens": 2**31}, {"request_id": ""}, {"created_at": "yesterday"}])
def test_the_one_pass_row_rejects_what_the_full_path_rejects(changes: dict[str, object]) -> None:
    with pytest.raises(EnvelopeRejected):
        envelope_row_json(_gateway_envelope(**changes), "sqlite")


def test_an_envelope_as_a_mapping_in_any_order_makes_the_same_row() -> None:
    env = _gateway_envelope()
    shuffled = dict(reversed(list(env.items())))
    for backend in ("sqlite", "postgresql"):
        assert envelope_row_json(shuffled, backend) == envelope_row_json(env, backend)


def _times() -> list[float]:
    rng = random.Random(20261130)
    edges = [0.0, 0.5, -0.5, 1e-7, -1e-7, 1764460800.9999995, 1764460800.0000005, 1764460800.0000015,
             1764460799.9999996, 253402300798.999999, -62135596800.0, 1.5e9 + 0.1234565]
    return (edges + [rng.uniform(-6e10, 2.5e11) for _ in range(3000)]
            + [1764460800 + rng.random() for _ in range(3000)] + [1764460800 + k / 1e6 + 5e-7 for k in range(1000)])


def test_created_texts_are_datetimes_text_to_the_character() -> None:
    """The memoised split of a timestamp gives what datetime.fromtimestamp(t, UTC) and its isoformat give,
    half-even microseconds and the carry into the next second included."""
    for t in _times():
        at = datetime.fromtimestamp(t, UTC)
        assert created_texts(t, "sqlite") == (at.replace(tzinfo=None).isoformat(" ", "microseconds"),
                                              at.date().isoformat()), t
        assert created_texts(t, "postgresql") == (at.isoformat(), at.date().isoformat()), t


@pytest.mark.parametrize("t", [math.inf, -math.inf, math.nan, 1e20, 253402300800.0])
def test_created_texts_refuse_what_datetime_refuses(t: float) -> None:
    with pytest.raises((OverflowError, ValueError)):
        datetime.fromtimestamp(t, UTC)
    with pytest.raises((OverflowError, ValueError)):
        created_texts(t, "sqlite")
