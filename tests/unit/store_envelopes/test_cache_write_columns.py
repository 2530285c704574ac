"""The cache-write columns of an envelope take the same paths as every other integer column."""

from __future__ import annotations

import pytest

from gateway.store.envelope_fields import Envelope
from gateway.store.envelope_rows import envelope_row_json, row_json, values_row_json
from gateway.store.envelopes import EnvelopeRejected, normalize_envelope
from tests.unit.store_envelopes.test_normalize import _gateway_envelope

WRITES = {"cache_write_tokens": 1500, "cache_write_1h_tokens": 1200, "cache_write_picousd": 3_420_000_000}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("changes", [
    WRITES,  # what an Anthropic call with cache writes leaves: the one-pass path
    {"cache_write_tokens": 2**31 - 1, "cache_write_1h_tokens": 0, "cache_write_picousd": 2**63 - 1},
    {"cache_write_tokens": None, "cache_write_picousd": None},  # None is the default, 0
    {"cache_write_tokens": "12", "cache_write_1h_tokens": True, "cache_write_picousd": 5.0},  # the full path
])
def test_the_one_pass_row_equals_the_full_path(backend: str, changes: dict[str, object]) -> None:
    env = _gateway_envelope(**changes)
    full = row_json(normalize_envelope(env), backend)
    assert envelope_row_json(env, backend) == full
    named = Envelope(**env)  # type: ignore[arg-type]
    assert values_row_json(named, backend) in (full, None)
    if changes is WRITES:
        assert values_row_json(named, backend) == full
    row = normalize_envelope(env)
    for k, v in changes.items():
        assert row[k] == (0 if v is None else int(v))  # type: ignore[call-overload]


@pytest.mark.parametrize("changes", [{"cache_write_tokens": 2**31}, {"cache_write_1h_tokens": -(2**31) - 1},
                                     {"cache_write_picousd": 2**63}, {"cache_write_picousd": float("nan")},
                                     {"cache_write_tokens": "many"}])
def test_out_of_range_writes_are_refused_on_both_paths(changes: dict[str, object]) -> None:
    env = _gateway_envelope(**changes)
    with pytest.raises(EnvelopeRejected):
        envelope_row_json(env, "sqlite")
    assert values_row_json(Envelope(**env), "sqlite") is None  # type: ignore[arg-type]
