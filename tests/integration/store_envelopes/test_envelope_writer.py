"""EnvelopeWriter against real ledgers: batches, flush/close, the journal during outages, replays."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from gateway.store.envelope_fields import Envelope
from gateway.store.envelopes import EnvelopeWriter
from gateway.store.journal import HEADER_KEY, REJECTED_SUFFIX, SUFFIX
from gateway.store.schema import envelopes

T0 = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)


def env(i: int, **kw) -> dict:
    return {
        "envelope_id": uuid.uuid4().hex,
        "request_id": f"req-{i}",
        "created_at": T0.timestamp() + i,
        "tenant": "acme",
        "route": "chat",
        "model_requested": "gpt-x",
        "prompt_tokens": i,
        "completion_tokens": 1,
        "cost_picousd": 1_000_000 + i,
        "status": 200,
        "stream": False,
        "usage_reported": True,
        **kw,
    }


async def counts(ledger) -> tuple[int, int]:
    """(rows, distinct envelope ids)."""
    async with ledger.read() as conn:
        q = select(func.count(), func.count(func.distinct(envelopes.c.envelope_id))).select_from(envelopes)
        n, distinct = (await conn.execute(q)).one()
    return int(n), int(distinct)


async def all_ids(ledger) -> set[str]:
    async with ledger.read() as conn:
        return set((await conn.execute(select(envelopes.c.envelope_id))).scalars())


async def eventually(pred, timeout_s: float = 10.0, step_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = pred()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step_s)


def journal_files(d: Path) -> list[Path]:
    return sorted(d.glob(f"*{SUFFIX}")) if d.exists() else []


def journal_lines(d: Path) -> list[dict]:
    """Every envelope in the journal files: object lines as they are, row arrays (the group commit's
    lines) named by their file's column header."""
    out = []
    for f in journal_files(d):
        columns = None
        for line in f.read_text().splitlines():
            if not line.strip():
                continue
            obj = json.loads(line)
            if isinstance(obj, dict) and HEADER_KEY in obj:
                columns = obj[HEADER_KEY]
            elif isinstance(obj, list):
                out.append(dict(zip(columns, obj, strict=True)))
            else:
                out.append(obj)
    return out


@pytest.fixture
async def writers():
    """Writers made by a test are closed even when it fails."""
    made: list[EnvelopeWriter] = []
    yield made
    for w in made:
        await w.aclose()


def make(writers, ledger, journal_dir, **kw) -> EnvelopeWriter:
    w = EnvelopeWriter(ledger, journal_dir, **kw)
    writers.append(w)
    return w


async def test_batches_arrive_and_every_column_round_trips(ledger, journal_dir, writers):
    w = make(writers, ledger, journal_dir, batch_size=50, flush_interval_s=0.05)
    await w.start()
    full = env(
        0,
        created_at=datetime(2025, 5, 1, 23, 59, 59, 999999, tzinfo=UTC),
        key_id="key_1",
        feature="search",
        template_id="greet",
        template_version="3",
        template_hash="abc",
        model_served="gpt-x-2025",
        provider="openai",
        attempts=[{"provider": "openai", "model": "gpt-x", "status": 200, "latency_ms": 12.5}],
        cached_tokens=5,
        cost_picousd=9_007_199_254_740_993,  # 2**53 + 1: a float would lose the 1
        cache_write_tokens=2**31 - 1,
        cache_write_1h_tokens=3,
        cache_write_picousd=2**63 - 1,
        cache_status="miss",
        cache_saved_tokens=7,
        cache_saved_picousd=123,
        latency_ms=123.25,
        ttft_ms=45.5,
        error_type=None,
        stream=True,
        safety_flags={"pii_input": ["EMAIL"]},
        request_body='{"messages": []}',
        response_body="ünïcode ✓",
    )
    w.submit(full)
    for i in range(1, 500):
        w.submit(env(i))
    await w.flush()
    assert await counts(ledger) == (500, 500)
    st = w.stats
    assert st["written"] == 500 and st["journaled"] == 0 and st["degraded"] is False and st["queued"] == 0
    assert journal_files(journal_dir) == []
    async with ledger.read() as conn:
        row = (await conn.execute(select(envelopes).where(envelopes.c.envelope_id == full["envelope_id"]))).one()
    got = row._asdict()
    assert isinstance(got.pop("id"), int)
    assert got.pop("created_at") == full["created_at"]
    assert got.pop("day") == date(2025, 5, 1)
    expected = {k: v for k, v in full.items() if k != "created_at"}
    assert {k: got[k] for k in expected} == expected
    assert {k for k, v in got.items() if k not in expected} == set()


async def test_a_lone_envelope_lands_within_the_flush_interval_without_flush(ledger, journal_dir, writers):
    w = make(writers, ledger, journal_dir, flush_interval_s=0.05)
    await w.start()
    w.submit(env(1))
    w.submit(env(2))
    t0 = time.monotonic()
    await eventually(lambda: counts(ledger), timeout_s=5)
    assert time.monotonic() - t0 < 2.0
    await eventually(lambda: w.stats["written"] == 2)


async def test_a_missing_envelope_id_is_assigned_and_a_reused_request_id_is_kept_twice(ledger, journal_dir, writers):
    w = make(writers, ledger, journal_dir)
    await w.start()
    a = env(1)
    del a["envelope_id"]
    w.submit(a)
    w.submit(env(2, request_id="req-1"))
    await w.flush()
    async with ledger.read() as conn:
        rows = (await conn.execute(select(envelopes.c.envelope_id, envelopes.c.request_id))).all()
    assert [r.request_id for r in rows] == ["req-1", "req-1"]
    assert all(len(r.envelope_id) == 32 for r in rows) and rows[0].envelope_id != rows[1].envelope_id
    assert "envelope_id" not in a, "the caller's dict is not changed"


async def test_aclose_drains_everything_submitted(ledger, journal_dir):
    w = EnvelopeWriter(ledger, journal_dir, batch_size=64, flush_interval_s=1.0)
    await w.start()
    sent = [env(i) for i in range(1000)]
    for e in sent:
        w.submit(e)
    await w.aclose()
    assert await all_ids(ledger) == {e["envelope_id"] for e in sent}
    assert journal_files(journal_dir) == []
    # After close nothing is lost either: it goes to the journal, for the next start.
    late = env(5000)
    w.submit(late)
    assert [line["envelope_id"] for line in journal_lines(journal_dir)] == [late["envelope_id"]]
    w2 = EnvelopeWriter(ledger, journal_dir)
    await w2.start()
    await w2.aclose()
    assert late["envelope_id"] in await all_ids(ledger)
    assert journal_files(journal_dir) == []


async def test_submit_never_raises_and_bad_envelopes_are_set_aside(ledger, journal_dir, writers):
    w = make(writers, ledger, journal_dir)
    await w.start()
    w.submit(None)  # type: ignore[arg-type]
    w.submit(env(1, request_id=None))
    w.submit(env(2, prompt_tokens="lots"))
    good = env(3)
    w.submit(good)
    await w.flush()
    assert await all_ids(ledger) == {good["envelope_id"]}
    assert w.stats["rejected"] == 2
    (rejected,) = journal_dir.glob(f"*{REJECTED_SUFFIX}")
    reasons = [json.loads(line)["reason"] for line in rejected.read_text().splitlines()]
    assert reasons == ["request_id missing", "prompt_tokens: 'lots' is not a number"]


def named(e: dict) -> Envelope:
    return Envelope(**{k: e.get(k) for k in Envelope._fields})


async def test_envelopes_submitted_as_values_land_as_submitted_ones_do(ledger, journal_dir, writers):
    """submit_envelope (every request's way in) makes the row from the values; what it cannot take as it
    is (a value to convert, a bad one, a full queue) goes the dict's way, with the same outcome."""
    w = make(writers, ledger, journal_dir, queue_size=20, batch_size=5, flush_interval_s=0.05)
    await w.start()
    plain = [env(i, stream=True, usage_reported=False, attempts=[{"provider": "p"}]) for i in range(5)]
    converted = env(5, prompt_tokens="12", created_at=T0)
    no_id = env(6, envelope_id=None)
    for e in [*plain, converted, no_id]:
        w.submit_envelope(named(e))
    w.submit_envelope(named(env(7, prompt_tokens="lots")))
    overflow = [env(100 + i) for i in range(30)]  # no await: the queue fills and the rest is journaled
    for e in overflow:
        w.submit_envelope(named(e))
    assert w.stats["overflowed"] > 0
    await w.flush()
    await eventually(lambda: _all_in_count(ledger, 5 + 2 + 30), timeout_s=10)
    ids = await all_ids(ledger)
    assert {e["envelope_id"] for e in [*plain, converted, *overflow]} <= ids
    assert w.stats["rejected"] == 1
    async with ledger.read() as conn:
        row = (await conn.execute(select(envelopes).where(envelopes.c.envelope_id == converted["envelope_id"]))).one()
        first = (await conn.execute(select(envelopes).where(envelopes.c.envelope_id == plain[0]["envelope_id"]))).one()
    assert row.prompt_tokens == 12 and row.created_at == T0
    assert first.stream is True and first.usage_reported is False and first.attempts == [{"provider": "p"}]


async def _all_in_count(ledger, n: int) -> bool:
    return len(await all_ids(ledger)) == n


async def test_replay_is_idempotent(ledger, journal_dir, writers):
    sent = [env(i) for i in range(100)]
    w = make(writers, ledger, journal_dir)
    await w.start()
    for e in sent[:50]:
        w.submit(e)
    await w.flush()
    # A dead process journaled all 100 (say its commit acknowledgements were lost), some twice.
    journal_dir.mkdir(exist_ok=True)
    dead = journal_dir / f"deadhost-1-1-0001{SUFFIX}"
    dead.write_text("".join(json.dumps({**e, "created_at": e["created_at"]}) + "\n" for e in sent + sent[10:20]))
    w2 = make(writers, ledger, journal_dir, batch_size=16)
    await w2.start()
    assert await counts(ledger) == (100, 100)
    assert w2.stats["replayed"] == 110
    assert not dead.exists()


async def test_a_file_left_by_a_dead_process_is_replayed_at_start(ledger, journal_dir, writers):
    journal_dir.mkdir()
    sent = [env(i) for i in range(30)]
    lines = [json.dumps(e) for e in sent]
    # Datetimes as the journal writes them (ISO strings), and a torn last line from the crash.
    lines[0] = json.dumps({**sent[0], "created_at": datetime.fromtimestamp(sent[0]["created_at"], UTC).isoformat()})
    (journal_dir / f"otherhost-999-1700000000000-0001{SUFFIX}").write_text("\n".join(lines) + '\n{"envelope_id": "x')
    w = make(writers, ledger, journal_dir)
    await w.start()
    assert await all_ids(ledger) == {e["envelope_id"] for e in sent}
    assert journal_files(journal_dir) == []
    assert len(list(journal_dir.glob(f"*{REJECTED_SUFFIX}"))) == 1
    assert w.stats["replayed"] == 30


async def test_a_full_queue_overflows_to_the_journal_and_still_lands(ledger, journal_dir, writers):
    w = make(writers, ledger, journal_dir, queue_size=10, batch_size=5, flush_interval_s=0.05)
    await w.start()
    sent = [env(i) for i in range(200)]
    for e in sent:  # no await in between: the writer cannot drain, the queue fills
        w.submit(e)
    st = w.stats
    assert st["queued"] == 10 and st["overflowed"] == 190 and st["journaled"] == 190
    # The overflow is in the journal at once (the queued ten reach it with their group commit).
    journaled_ids = [line["envelope_id"] for line in journal_lines(journal_dir)]
    assert {e["envelope_id"] for e in sent[10:]} <= set(journaled_ids) and len(journaled_ids) in (190, 200)
    await w.flush()
    await eventually(lambda: _all_in(ledger, sent), timeout_s=10)
    assert await counts(ledger) == (200, 200)
    await eventually(lambda: journal_files(journal_dir) == [])
    assert w.stats["replayed"] == 190


async def _all_in(ledger, sent) -> bool:
    return await all_ids(ledger) == {e["envelope_id"] for e in sent}


async def test_database_unreachable_everything_is_journaled_then_replayed_exactly_once(backend, journal_dir, writers):
    ledger = backend.ledger
    w = make(writers, ledger, journal_dir, batch_size=20, flush_interval_s=0.02, retry_interval_s=0.2)
    await w.start()
    sent = [env(i) for i in range(50)]
    for e in sent:
        w.submit(e)
    await w.flush()
    assert await counts(ledger) == (50, 50)

    await backend.cut()
    during = [env(i) for i in range(50, 350)]
    for k, e in enumerate(during):  # traffic goes on while the database is away
        w.submit(e)
        if k % 25 == 0:
            await asyncio.sleep(0.01)
    t0 = time.monotonic()
    await w.flush()
    assert time.monotonic() - t0 < 8.0, "an outage must not stall the writer"
    st = w.stats
    assert st["degraded"] is True and st["db_errors"] >= 1
    assert st["journaled"] == 300
    assert sorted(line["envelope_id"] for line in journal_lines(journal_dir)) == sorted(
        e["envelope_id"] for e in during
    )
    await asyncio.sleep(0.5)  # a few retries against the dead ledger change nothing
    assert w.stats["degraded"] is True

    await backend.restore()
    after = [env(i) for i in range(350, 400)]
    for e in after:
        w.submit(e)
    await eventually(lambda: not w.stats["degraded"], timeout_s=15)
    await w.flush()
    await eventually(lambda: _all_in(ledger, sent + during + after), timeout_s=10)
    assert await counts(ledger) == (400, 400)
    assert journal_files(journal_dir) == []
    assert w.stats["replayed"] >= 300


async def test_shutdown_during_an_outage_leaves_the_journal_for_the_next_start(backend, journal_dir):
    ledger = backend.ledger
    w = EnvelopeWriter(ledger, journal_dir, retry_interval_s=0.2, flush_interval_s=0.02)
    await w.start()
    await backend.cut()
    sent = [env(i) for i in range(120)]
    for e in sent:
        w.submit(e)
    await w.aclose()
    assert sorted(line["envelope_id"] for line in journal_lines(journal_dir)) == sorted(e["envelope_id"] for e in sent)
    await backend.restore()

    w2 = EnvelopeWriter(ledger, journal_dir)
    await w2.start()
    try:
        assert await counts(ledger) == (120, 120)
        assert journal_files(journal_dir) == []
    finally:
        await w2.aclose()


async def test_start_with_the_ledger_down_is_degraded_not_failed(backend, journal_dir, writers):
    ledger = backend.ledger
    journal_dir.mkdir()
    left = [env(i) for i in range(100, 105)]
    (journal_dir / f"deadhost-7-7-0001{SUFFIX}").write_text("".join(json.dumps(e) + "\n" for e in left))
    await backend.cut()
    w = make(writers, ledger, journal_dir, retry_interval_s=0.2, flush_interval_s=0.02)
    t0 = time.monotonic()
    await w.start()  # its replay of the leftover file fails: it starts degraded
    assert time.monotonic() - t0 < 5.0
    assert w.stats["degraded"] is True
    sent = [env(i) for i in range(10)]
    for e in sent:
        w.submit(e)
    await w.flush()
    assert len(journal_lines(journal_dir)) == 15
    await backend.restore()
    await eventually(lambda: not w.stats["degraded"], timeout_s=15)
    assert await all_ids(ledger) == {e["envelope_id"] for e in left + sent}
    assert journal_files(journal_dir) == []


async def test_a_row_the_database_refuses_is_set_aside_and_the_rest_of_its_batch_lands(backend, journal_dir, writers):
    ledger = backend.ledger
    # A rule the normalizer knows nothing about, so only the database can refuse the row.
    async with ledger.write() as conn:
        if backend.name == "sqlite":
            await conn.execute(
                text(
                    "CREATE TRIGGER no_huge_prompts BEFORE INSERT ON envelopes WHEN NEW.prompt_tokens >= 1000"
                    " BEGIN SELECT RAISE(ABORT, 'prompt too large'); END"
                )
            )
        else:
            await conn.execute(
                text("ALTER TABLE envelopes ADD CONSTRAINT no_huge_prompts CHECK (prompt_tokens < 1000)")
            )
    w = make(writers, ledger, journal_dir, batch_size=100, flush_interval_s=0.5)
    await w.start()
    sent = [env(i) for i in range(10)]
    poison = env(99, prompt_tokens=5000)
    for e in [*sent[:5], poison, *sent[5:]]:
        w.submit(e)
    await w.flush()
    assert await all_ids(ledger) == {e["envelope_id"] for e in sent}
    st = w.stats
    assert st["degraded"] is False and st["rejected"] == 1 and st["journaled"] == 0 and st["written"] == 10
    (rejected,) = journal_dir.glob(f"*{REJECTED_SUFFIX}")
    kept = json.loads(rejected.read_text())
    assert kept["envelope"]["envelope_id"] == poison["envelope_id"] and kept["envelope"]["prompt_tokens"] == 5000


async def test_every_envelope_is_on_disk_within_the_commit_interval_before_the_ledger_has_it(ledger, journal_dir,
                                                                                            writers):
    # The ledger insert waits (a long flush interval, a large batch): the journal must not.
    w = make(writers, ledger, journal_dir, batch_size=5000, flush_interval_s=30, commit_interval_s=0.02)
    await w.start()
    sent = [env(i) for i in range(40)]
    t0 = time.monotonic()
    for k, e in enumerate(sent):
        w.submit_envelope(named(e))
        if k % 10 == 9:
            await asyncio.sleep(0.005)
    await eventually(lambda: len(journal_lines(journal_dir)) == 40, timeout_s=5, step_s=0.005)
    assert time.monotonic() - t0 < 1.0
    assert sorted(line["envelope_id"] for line in journal_lines(journal_dir)) == sorted(e["envelope_id"] for e in sent)
    assert await counts(ledger) == (0, 0), "the ledger insert is still waiting for its batch"
    st = w.stats
    assert st["committed"] == 40 and 1 <= st["commits"] <= 40 and st["journaled"] == 0
    await w.flush()
    assert await counts(ledger) == (40, 40)
    assert journal_files(journal_dir) == [], "once every row is in the ledger its journal file goes"
    w.submit(env(99))
    await w.flush()
    assert await counts(ledger) == (41, 41) and journal_files(journal_dir) == []
