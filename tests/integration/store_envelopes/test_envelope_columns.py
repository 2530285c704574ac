"""Every field of an Envelope lands in the ledger column of its name, on SQLite and PostgreSQL, by every way in:
the request path's values, the journal (an overflow, a shutdown before start), and journals the previous version
(positional field lists) left on disk.

The values are made from the schema, one distinct value per column (a bool column takes opposite values in two
envelopes), so a column added later is covered without touching this file, and two fields swapped cannot pass.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, Integer, Text, select

from gateway.store.envelope_fields import COLUMNS, Envelope
from gateway.store.envelope_rows import values_row_json
from gateway.store.envelopes import EnvelopeWriter
from gateway.store.journal import SUFFIX
from gateway.store.schema import UTCDateTime, envelopes

CREATED = 1_764_460_800.25  # 2025-11-30 00:00:00.25 UTC


def distinct_envelope(k: int) -> Envelope:
    """An envelope whose every field holds a value no other field holds, recognisable by its column."""
    values: dict[str, Any] = {}
    for i, name in enumerate(COLUMNS):
        kind = envelopes.c[name].type
        if name == "envelope_id":
            values[name] = uuid.uuid4().hex
        elif isinstance(kind, UTCDateTime):
            values[name] = CREATED + k
        elif isinstance(kind, Boolean):
            values[name] = (i + k) % 2 == 0
        elif isinstance(kind, BigInteger):  # before Integer: BigInteger is one
            values[name] = 2**40 + 1000 * k + i  # past 32 bits: a BIGINT kept as one
        elif isinstance(kind, Integer):
            values[name] = 1000 * k + i + 1
        elif isinstance(kind, Float):
            values[name] = 1000 * k + i + 0.25
        elif isinstance(kind, JSON):
            values[name] = [{"column": name, "envelope": k}]
        elif isinstance(kind, Text):
            values[name] = f"{name}:{k}"
        else:
            raise AssertionError(f"envelopes.{name}: no distinct value for {kind!r}: add one here")
    return Envelope(**values)


def expected_row(env: Envelope) -> dict[str, Any]:
    out = env._asdict()
    at = datetime.fromtimestamp(env.created_at, UTC)
    out["created_at"], out["day"] = at, at.date()
    return out


async def rows_by_id(ledger) -> dict[str, dict[str, Any]]:
    async with ledger.read() as conn:
        rows = (await conn.execute(select(envelopes))).mappings().all()
    return {r["envelope_id"]: dict(r) for r in rows}


def assert_by_name(row: dict[str, Any], expected: dict[str, Any]) -> None:
    assert set(expected) == set(row) - {"id"}, "every column of the table but its own key is compared"
    wrong = {c: (row[c], v) for c, v in expected.items() if row[c] != v or type(row[c]) is not type(v)}
    assert wrong == {}, "column: (read back, submitted)"


def test_the_distinct_envelope_is_distinct_and_fast():
    a, b = distinct_envelope(0), distinct_envelope(1)
    for env in (a, b):
        plain = [v for v in env if not isinstance(v, bool)]
        assert len({repr(v) for v in plain}) == len(plain)
    assert all(x != y for x, y in zip(a, b, strict=True))  # the bools too
    # The request path's own way: the values as they are, no conversion.
    assert values_row_json(a, "sqlite") is not None and values_row_json(a, "postgresql") is not None


async def test_every_field_lands_in_its_column_from_the_request_path(ledger, journal_dir):
    w = EnvelopeWriter(ledger, journal_dir, batch_size=8, flush_interval_s=0.01)
    await w.start()
    sent = [distinct_envelope(0), distinct_envelope(1)]
    try:
        for env in sent:
            w.submit_envelope(env)
        await w.flush()
    finally:
        await w.aclose()
    got = await rows_by_id(ledger)
    assert set(got) == {e.envelope_id for e in sent}
    for env in sent:
        assert_by_name(got[env.envelope_id], expected_row(env))


async def test_every_field_lands_in_its_column_through_the_journal(ledger, journal_dir):
    # Never started: the first envelope waits in the queue (journaled as a row at aclose), the second
    # overflows the queue of one (journaled as it is, a mapping); a later writer replays both.
    first = EnvelopeWriter(ledger, journal_dir, queue_size=1)
    sent = [distinct_envelope(0), distinct_envelope(1)]
    for env in sent:
        first.submit_envelope(env)
    assert first.stats["overflowed"] == 1
    await first.aclose()
    assert await rows_by_id(ledger) == {}
    second = EnvelopeWriter(ledger, journal_dir)
    await second.start()
    await second.aclose()
    assert second.replayed_at_start and second.stats["replayed"] == 2
    got = await rows_by_id(ledger)
    for env in sent:
        assert_by_name(got[env.envelope_id], expected_row(env))


# What the previous version (positional field lists, before Envelope) wrote, as it wrote it (made by running that
# version's EnvelopeWriter and Journal): an overflowed envelope (a mapping, epoch seconds), one journaled at a
# shutdown before start (a row read back: times as text, JSON as text, SQLite's bools as 0/1), and the group
# commit's column header and row arrays (for SQLite and for PostgreSQL).
_BODY = r'"request_body":"{\"model\":\"gpt-x\"}","response_body":"{\"id\":\"c1\"}"'
_ATTEMPTS = (r'"[{\"provider\":\"openai\",\"model\":\"gpt-x\",\"status\":200,\"error\":null,\"latency_ms\":12.5,'
             r'\"tokens\":30}]"')
_COMMON = ('"tenant":"acme","key_id":"key_old","route":"chat","feature":"search","template_id":null,'
           '"template_version":null,"template_hash":null,"model_requested":"gpt-x","model_served":"gpt-x-2025",'
           '"provider":"openai"')
_COUNTS = ('"prompt_tokens":21,"completion_tokens":9,"cached_tokens":4,"cost_picousd":9007199254740993,'
           '"cache_write_tokens":3,"cache_write_1h_tokens":2,"cache_write_picousd":777,"cache_status":null,'
           '"cache_saved_tokens":0,"cache_saved_picousd":0,"latency_ms":41.125')
PREVIOUS_SPILL = (
    '{"envelope_id":"0190a0000000000000000000000000a2","request_id":"req-old-2","created_at":1764460800.25,'
    + _COMMON + ',"attempts":null,' + _COUNTS + ',"ttft_ms":null,"status":502,"error_type":"UpstreamError",'
    '"stream":false,"usage_reported":false,"safety_flags":null,' + _BODY + '}\n'
    '{"envelope_id":"0190a0000000000000000000000000a1","request_id":"req-old-1",'
    '"created_at":"2025-11-30 00:00:00.250000","day":"2025-11-30",' + _COMMON + ',"attempts":' + _ATTEMPTS + ','
    + _COUNTS + ',"ttft_ms":12.5,"status":200,"error_type":null,"stream":1,"usage_reported":1,"safety_flags":null,'
    + _BODY + '}\n'
)
PREVIOUS_SEGMENT = (
    '{"journal_columns":["envelope_id","request_id","created_at","day","tenant","key_id","route","feature",'
    '"template_id","template_version","template_hash","model_requested","model_served","provider","attempts",'
    '"prompt_tokens","completion_tokens","cached_tokens","cost_picousd","cache_write_tokens","cache_write_1h_tokens",'
    '"cache_write_picousd","cache_status","cache_saved_tokens","cache_saved_picousd","latency_ms","ttft_ms","status",'
    '"error_type","stream","usage_reported","safety_flags","request_body","response_body"]}\n'
    '["0190a0000000000000000000000000a3","req-old-3","2025-11-30 23:59:59.999999","2025-11-30","acme","key_old",'
    '"chat","search",null,null,null,"gpt-x","gpt-x-2025","openai",' + _ATTEMPTS + ',21,9,4,9007199254740993,3,2,777,'
    'null,0,0,41.125,12.5,200,null,1,1,null,"{\\"model\\":\\"gpt-x\\"}","{\\"id\\":\\"c1\\"}"]\n'
    '["0190a0000000000000000000000000a4","req-old-4","2025-11-30T00:00:00.500000+00:00","2025-11-30","acme",null,'
    '"chat",null,null,null,null,null,null,null,"[]",1,2,0,5,0,0,0,null,0,0,3.5,null,200,null,false,true,null,null,'
    'null]\n'
)


def write_previous_journal(journal_dir: Path) -> None:
    journal_dir.mkdir(mode=0o700, parents=True)
    (journal_dir / f"old-1-1-0001{SUFFIX}").write_text(PREVIOUS_SPILL)
    (journal_dir / f"old-1-1-0002{SUFFIX}").write_text(PREVIOUS_SEGMENT)


def journal_files(journal_dir: Path) -> list[Path]:
    return list(journal_dir.glob(f"*{SUFFIX}"))


async def test_journals_of_the_previous_version_replay_into_their_columns(ledger, journal_dir: Path):
    write_previous_journal(journal_dir)
    w = EnvelopeWriter(ledger, journal_dir)
    await w.start()
    await w.aclose()
    assert w.replayed_at_start and w.stats["replayed"] == 4 and w.stats["rejected"] == 0
    got = await rows_by_id(ledger)
    attempts = [{"provider": "openai", "model": "gpt-x", "status": 200, "error": None, "latency_ms": 12.5,
                 "tokens": 30}]
    old = {
        "tenant": "acme", "key_id": "key_old", "route": "chat", "feature": "search", "template_id": None,
        "template_version": None, "template_hash": None, "model_requested": "gpt-x", "model_served": "gpt-x-2025",
        "provider": "openai", "attempts": attempts, "prompt_tokens": 21, "completion_tokens": 9, "cached_tokens": 4,
        "cost_picousd": 9_007_199_254_740_993, "cache_write_tokens": 3, "cache_write_1h_tokens": 2,
        "cache_write_picousd": 777, "cache_status": None, "cache_saved_tokens": 0, "cache_saved_picousd": 0,
        "latency_ms": 41.125, "ttft_ms": 12.5, "status": 200, "error_type": None, "stream": True,
        "usage_reported": True, "safety_flags": None, "request_body": '{"model":"gpt-x"}',
        "response_body": '{"id":"c1"}',
    }
    day = date(2025, 11, 30)
    expected = {
        "0190a0000000000000000000000000a1": {**old, "request_id": "req-old-1", "day": day,
                                             "created_at": datetime(2025, 11, 30, 0, 0, 0, 250000, tzinfo=UTC)},
        "0190a0000000000000000000000000a2": {**old, "request_id": "req-old-2", "day": day, "attempts": None,
                                             "created_at": datetime(2025, 11, 30, 0, 0, 0, 250000, tzinfo=UTC),
                                             "ttft_ms": None, "status": 502, "error_type": "UpstreamError",
                                             "stream": False, "usage_reported": False},
        "0190a0000000000000000000000000a3": {**old, "request_id": "req-old-3", "day": day,
                                             "created_at": datetime(2025, 11, 30, 23, 59, 59, 999999, tzinfo=UTC)},
        "0190a0000000000000000000000000a4": {
            **{c: None for c in COLUMNS}, "envelope_id": "0190a0000000000000000000000000a4", "request_id": "req-old-4",
            "created_at": datetime(2025, 11, 30, 0, 0, 0, 500000, tzinfo=UTC), "day": day, "tenant": "acme",
            "route": "chat", "attempts": [], "prompt_tokens": 1, "completion_tokens": 2, "cached_tokens": 0,
            "cost_picousd": 5, "cache_write_tokens": 0, "cache_write_1h_tokens": 0, "cache_write_picousd": 0,
            "cache_saved_tokens": 0, "cache_saved_picousd": 0, "latency_ms": 3.5, "status": 200, "stream": False,
            "usage_reported": True},
    }
    assert set(got) == set(expected)
    for eid, want in expected.items():
        assert_by_name(got[eid], {"envelope_id": eid, **want})
    assert journal_files(journal_dir) == [], "replayed files go"
