"""Envelope: the ledger's columns by name, checked against the schema, put in column order by name."""

import orjson
import pytest

from gateway.store.envelope_fields import COLUMNS, IN_COLUMN_ORDER, Envelope, check_fields
from gateway.store.envelope_rows import ENVELOPE_KEYS, values_row_json
from gateway.store.schema import envelopes


def test_the_fields_are_the_columns_but_the_key_and_the_day():
    assert sorted(Envelope._fields) == sorted(COLUMNS)
    assert COLUMNS == tuple(c.name for c in envelopes.columns if c.name not in ("id", "day"))


def test_a_column_without_its_field_or_a_field_without_its_column_is_named():
    with pytest.raises(RuntimeError, match=r"columns without a field \['toxicity'\], fields without a column \[\]"):
        check_fields([*COLUMNS, "toxicity"], Envelope._fields)
    with pytest.raises(RuntimeError, match=r"columns without a field \[\], fields without a column \['feature'\]"):
        check_fields([c for c in COLUMNS if c != "feature"], Envelope._fields)
    check_fields(list(reversed(COLUMNS)), Envelope._fields)  # the order is IN_COLUMN_ORDER's business


def test_the_later_stages_columns_default_to_what_the_column_holds_when_nothing_is_known():
    assert Envelope._field_defaults == {"template_id": None, "template_version": None, "template_hash": None,
                                        "cache_status": None, "cache_saved_tokens": 0, "cache_saved_picousd": 0,
                                        "safety_flags": None}


def test_each_value_goes_to_the_column_of_its_name():
    # Text columns get their own name as the value, so the row read by column shows where each went.
    values = {f: f for f in Envelope._fields}
    values.update(created_at=1_764_460_800.5, prompt_tokens=1, completion_tokens=2, cached_tokens=3,
                  cost_picousd=4, cache_write_tokens=5, cache_write_1h_tokens=6, cache_write_picousd=7,
                  cache_saved_tokens=8, cache_saved_picousd=9, status=10, latency_ms=11.5, ttft_ms=12.5,
                  stream=True, usage_reported=False, attempts=["attempts"], safety_flags={"safety_flags": 1})
    env = Envelope(**values)
    assert IN_COLUMN_ORDER(env) == tuple(values[c] for c in COLUMNS)
    for backend in ("sqlite", "postgresql"):
        text = values_row_json(env, backend)
        assert text is not None
        row = dict(zip(ENVELOPE_KEYS, orjson.loads(text), strict=True))
        for c in COLUMNS:
            if c in ("created_at", "attempts", "safety_flags", "stream", "usage_reported"):
                continue  # converted for the driver: the integration test reads them back
            assert row[c] == values[c], c
        assert orjson.loads(row["attempts"]) == ["attempts"]
        assert orjson.loads(row["safety_flags"]) == {"safety_flags": 1}
        assert row["day"] == "2025-11-30" and row["created_at"].startswith("2025-11-30")
        assert (row["stream"], row["usage_reported"]) == ((1, 0) if backend == "sqlite" else (True, False))
