"""Envelope: the ledger's columns by name and in order, checked against the schema; the request path's builder."""

from types import SimpleNamespace

import orjson
import pytest

from gateway.store.envelope_fields import COLUMNS, LATER_STAGES, Envelope, check_fields, envelope_builder, new_envelope
from gateway.store.envelope_rows import ENVELOPE_KEYS, values_row_json
from gateway.store.schema import envelopes


def test_the_fields_are_the_columns_in_order_but_the_key_and_the_day():
    assert Envelope._fields == COLUMNS == tuple(c.name for c in envelopes.columns if c.name not in ("id", "day"))


def test_a_column_without_its_field_a_field_without_its_column_or_two_swapped_are_named():
    with pytest.raises(RuntimeError, match=r"columns without a field \['toxicity'\], fields without a column \[\]"):
        check_fields([*COLUMNS, "toxicity"], Envelope._fields)
    with pytest.raises(RuntimeError, match=r"columns without a field \[\], fields without a column \['feature'\]"):
        check_fields([c for c in COLUMNS if c != "feature"], Envelope._fields)
    swapped = list(COLUMNS)
    i, j = swapped.index("prompt_tokens"), swapped.index("completion_tokens")
    swapped[i], swapped[j] = swapped[j], swapped[i]
    with pytest.raises(RuntimeError, match=r"out of the columns' order \['prompt_tokens', 'completion_tokens'\]"):
        check_fields(swapped, Envelope._fields)


def _distinct() -> dict:
    # Text columns hold their own name, so the row read by column shows where each value went.
    values = {f: f for f in Envelope._fields}
    values.update(created_at=1_764_460_800.5, prompt_tokens=1, completion_tokens=2, cached_tokens=3,
                  cost_picousd=4, cache_write_tokens=5, cache_write_1h_tokens=6, cache_write_picousd=7,
                  cache_saved_tokens=8, cache_saved_picousd=9, status=10, latency_ms=11.5, ttft_ms=12.5,
                  stream=True, usage_reported=False, attempts=["attempts"], safety_flags={"safety_flags": 1})
    return values


def test_field_i_is_the_rows_value_for_column_i():
    values = _distinct()
    env = Envelope(**values)
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


def test_new_envelope_leaves_the_later_stages_columns_at_what_they_hold_when_nothing_is_known():
    values = {k: v for k, v in _distinct().items() if k not in LATER_STAGES}
    env = new_envelope(**values)
    assert env._asdict() == {**values, **LATER_STAGES}
    assert new_envelope(**values, cache_status="hit").cache_status == "hit"


def test_the_builder_takes_each_column_from_the_source_of_its_name():
    values = _distinct()
    first = ("request_id", "tenant", "status", "stream")
    second = ("prompt_tokens", "attempts")
    rest = [c for c in COLUMNS if c not in (*first, *second, *LATER_STAGES)]
    build = envelope_builder({"a": first, "b": second}, rest)
    env = build(SimpleNamespace(**{c: values[c] for c in first}), SimpleNamespace(**{c: values[c] for c in second}),
                **{c: values[c] for c in rest})
    assert type(env) is Envelope
    assert env._asdict() == {**values, **LATER_STAGES}


@pytest.mark.parametrize(("sources", "worked_out", "message"), [
    ({"call": ("tenant", "toxicity")}, [c for c in COLUMNS if c not in ("tenant", *LATER_STAGES)],
     r"not columns \['toxicity'\]"),
    ({"call": ("tenant",)}, [c for c in COLUMNS if c not in LATER_STAGES], r"named twice \['tenant'\]"),
    ({"call": ("tenant",)}, [c for c in COLUMNS if c not in ("tenant", "status", *LATER_STAGES)],
     r"columns without a value \['status'\]"),
    ({"class": ("tenant",)}, [c for c in COLUMNS if c not in ("tenant", *LATER_STAGES)], r"not names \['class'\]"),
])
def test_a_builder_with_a_column_unnamed_or_named_wrong_is_refused(sources, worked_out, message):
    with pytest.raises(ValueError, match=message):
        envelope_builder(sources, worked_out)
