"""The journal on its own: appends, replay, torn lines, and who may replay which file."""

import asyncio
import json
import logging
import os
import stat
import sys
import textwrap
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from gateway.store.journal import REJECTED_SUFFIX, SUFFIX, Journal


class Sink:
    """An insert callback that records batches, and can be told to fail."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.batches: list[list[dict]] = []
        self.fail_after = fail_after

    async def __call__(self, batch: list[dict]) -> None:
        if self.fail_after is not None and len(self.batches) >= self.fail_after:
            raise ConnectionError("ledger down")
        self.batches.append(batch)

    @property
    def rows(self) -> list[dict]:
        return [r for b in self.batches for r in b]


def _jsonl(d) -> list:
    return sorted(d.glob(f"*{SUFFIX}"))


def _env(i: int, **kw) -> dict:
    return {"envelope_id": f"e{i:04d}", "request_id": f"r{i}", **kw}


async def test_append_writes_fsynced_json_lines_in_a_private_directory(tmp_path):
    d = tmp_path / "journal"
    j = Journal(d)
    assert not d.exists(), "nothing is created until something must be written"
    when = datetime(2025, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)
    await j.append([_env(1, created_at=when, day=date(2025, 3, 4), cost=Decimal("1.5"), attempts=[{"a": 1}])])
    await j.append([_env(2), _env(3)])
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    (path,) = _jsonl(d)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    host, pid = path.name.split("-")[0], path.name.split("-")[-3]
    assert pid == str(os.getpid()) and host
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    first = json.loads(lines[0])
    assert first["created_at"] == "2025-03-04T05:06:07.890000+00:00"
    assert first["day"] == "2025-03-04"
    assert first["cost"] == "1.5" and first["attempts"] == [{"a": 1}]
    assert j.pending
    j.close()


async def test_replay_hands_back_everything_in_batches_and_deletes_the_file(tmp_path):
    j = Journal(tmp_path)
    await j.append([_env(i) for i in range(10)])
    j.append_nowait(_env(10))
    await j.sync()
    sink = Sink()
    res = await j.replay(sink, batch_size=4)
    assert [len(b) for b in sink.batches] == [4, 4, 3]
    assert [r["envelope_id"] for r in sink.rows] == [f"e{i:04d}" for i in range(11)]
    assert (res.envelopes, res.files, res.skipped_lines) == (11, 1, 0)
    assert _jsonl(tmp_path) == [] and not j.pending
    # Appends after a replay go to a new file, which a second replay takes.
    await j.append([_env(99)])
    assert len(_jsonl(tmp_path)) == 1
    sink2 = Sink()
    await j.replay(sink2)
    assert [r["envelope_id"] for r in sink2.rows] == ["e0099"]
    j.close()
    assert _jsonl(tmp_path) == []


async def test_a_failed_insert_keeps_the_file_for_the_next_replay(tmp_path):
    j = Journal(tmp_path)
    await j.append([_env(i) for i in range(6)])
    with pytest.raises(ConnectionError):
        await j.replay(Sink(fail_after=1), batch_size=3)
    assert len(_jsonl(tmp_path)) == 1 and j.pending
    # Lines appended meanwhile go to a fresh file; the next replay takes both, the old one first.
    await j.append([_env(6)])
    sink = Sink()
    res = await j.replay(sink, batch_size=3)
    assert [r["envelope_id"] for r in sink.rows] == [f"e{i:04d}" for i in range(7)]
    assert res.files == 2 and _jsonl(tmp_path) == []
    j.close()


async def test_close_keeps_unreplayed_lines_and_drops_empty_files(tmp_path):
    j = Journal(tmp_path)
    await j.append([_env(1)])
    j.close()
    assert len(_jsonl(tmp_path)) == 1
    other = Journal(tmp_path)
    sink = Sink()
    await other.replay(sink)
    assert [r["envelope_id"] for r in sink.rows] == ["e0001"]
    other.close()
    assert list(tmp_path.iterdir()) == []


async def test_a_torn_last_line_is_skipped_with_a_warning_and_kept_aside(tmp_path, caplog):
    dead = tmp_path / f"deadhost-4242-1700000000000-0001{SUFFIX}"
    good = [json.dumps(_env(i)) for i in range(3)]
    dead.write_text("\n".join(good) + '\n{"envelope_id": "e0003", "request_id": "r')
    j = Journal(tmp_path)
    sink = Sink()
    with caplog.at_level(logging.WARNING, logger="gateway.store.journal"):
        res = await j.replay(sink)
    assert [r["envelope_id"] for r in sink.rows] == ["e0000", "e0001", "e0002"]
    assert res.skipped_lines == 1
    assert any("torn last line" in r.getMessage() for r in caplog.records)
    assert not dead.exists()
    (rejected,) = tmp_path.glob(f"*{REJECTED_SUFFIX}")
    kept = json.loads(rejected.read_text())
    assert kept["raw"].startswith('{"envelope_id": "e0003"') and "torn" in kept["reason"]
    j.close()


async def test_a_garbled_middle_line_does_not_stop_the_rest(tmp_path):
    f = tmp_path / f"x-1-1-0001{SUFFIX}"
    f.write_text(json.dumps(_env(1)) + "\nnot json at all\n[1, 2]\n\n" + json.dumps(_env(2)) + "\n")
    j = Journal(tmp_path)
    sink = Sink()
    res = await j.replay(sink)
    assert [r["envelope_id"] for r in sink.rows] == ["e0001", "e0002"]
    assert res.skipped_lines == 2
    j.close()


async def test_a_live_journals_file_is_not_taken_but_a_released_one_is(tmp_path):
    live = Journal(tmp_path)
    await live.append([_env(1)])
    replayer = Journal(tmp_path)
    sink = Sink()
    await replayer.replay(sink)
    assert sink.rows == [] and len(_jsonl(tmp_path)) == 1, "the owner is alive: its lock says so"
    # own_only never looks at other files at all.
    await replayer.replay(sink, own_only=True)
    assert sink.rows == []
    live.close()  # the owner goes away (as if it died): its lock goes with it
    await replayer.replay(sink)
    assert [r["envelope_id"] for r in sink.rows] == ["e0001"]
    assert _jsonl(tmp_path) == []
    replayer.close()


_HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from gateway.store.journal import Journal

    async def main():
        j = Journal(Path(sys.argv[1]))
        await j.append([{"envelope_id": "from-child", "request_id": "r"}])
        print("ready", flush=True)
        sys.stdin.readline()  # hold the lock until told (or killed)

    asyncio.run(main())
    """
)


async def test_another_process_keeps_its_file_while_alive_and_loses_it_when_killed(tmp_path):
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _HOLDER,
        str(tmp_path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=os.getcwd(),
    )
    try:
        assert child.stdout is not None
        assert (await asyncio.wait_for(child.stdout.readline(), 30)).strip() == b"ready"
        j = Journal(tmp_path)
        sink = Sink()
        await j.replay(sink)
        assert sink.rows == [] and len(_jsonl(tmp_path)) == 1
        child.kill()  # SIGKILL: no cleanup runs, the file stays behind
        await asyncio.wait_for(child.wait(), 10)
        await j.replay(sink)
        assert [r["envelope_id"] for r in sink.rows] == ["from-child"]
        assert _jsonl(tmp_path) == []
        j.close()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def test_two_replayers_never_replay_the_same_file(tmp_path):
    for n in range(5):
        (tmp_path / f"dead-{n}-1-0001{SUFFIX}").write_text(
            "".join(json.dumps(_env(n * 100 + i)) + "\n" for i in range(50))
        )
    a, b = Journal(tmp_path), Journal(tmp_path)
    sa, sb = Sink(), Sink()
    await asyncio.gather(a.replay(sa, batch_size=7), b.replay(sb, batch_size=7))
    ids = [r["envelope_id"] for r in sa.rows + sb.rows]
    assert len(ids) == 250 and len(set(ids)) == 250
    assert _jsonl(tmp_path) == []
    a.close()
    b.close()


async def test_replayers_running_between_appends_never_take_a_live_file(tmp_path):
    j = Journal(tmp_path)
    for i in range(20):
        j.append_nowait(_env(i))
        await Journal(tmp_path).replay(Sink())  # never takes j's file: it is locked
        assert j.own_paths()[-1].exists()
    sink = Sink()
    await j.replay(sink)
    assert len(sink.rows) == 20
    j.close()


async def test_anything_in_a_dict_can_be_journaled(tmp_path):
    j = Journal(tmp_path)
    j.append_nowait(_env(1, huge=2**70, when=datetime(2025, 1, 1, tzinfo=UTC), tags={"x"}, obj=object()))
    sink = Sink()
    await j.replay(sink)
    (got,) = sink.rows
    # Past 64 bits the line is written by the fallback encoder; reading it back gives a float.
    assert got["huge"] == float(2**70) and got["when"] == "2025-01-01T00:00:00+00:00" and got["tags"] == ["x"]
    assert got["obj"].startswith("<object object")
    j.close()


# -- the group commit's rows: committed, settled, retired, abandoned ----------------------------------

COLUMNS = ("envelope_id", "request_id", "prompt_tokens")


def _row(i: int) -> str:
    return json.dumps([f"e{i:04d}", f"r{i}", i])


def _lines(path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_commit_writes_a_column_header_then_row_arrays_that_a_replay_names(tmp_path):
    j = Journal(tmp_path, COLUMNS)
    seg = j.commit([_row(0), _row(1)])
    j.commit([_row(2)])
    (path,) = _jsonl(tmp_path)
    assert _lines(path) == [{"journal_columns": list(COLUMNS)}, ["e0000", "r0", 0], ["e0001", "r1", 1],
                            ["e0002", "r2", 2]]
    assert (seg.rows, seg.inserted) == (3, 0) and not j.pending, "committed rows are held in memory too"
    j.close()  # as a crash would: rows not known to be in the ledger stay on disk
    sink = Sink()
    res = await Journal(tmp_path).replay(sink)
    assert sink.rows == [{"envelope_id": f"e{i:04d}", "request_id": f"r{i}", "prompt_tokens": i} for i in range(3)]
    assert res.envelopes == 3 and _jsonl(tmp_path) == []


async def test_a_replay_names_values_by_the_header_of_the_version_that_wrote_them(tmp_path):
    # Written by a version with another column order and a column this one does not know.
    (tmp_path / f"old-1-1-0001{SUFFIX}").write_text(
        json.dumps({"journal_columns": ["request_id", "gone_column", "envelope_id"]}) + "\n"
        + json.dumps(["r1", 5, "e0001"]) + "\n"
        + json.dumps(["too", "few"]) + "\n"
        + json.dumps({"journal_columns": ["envelope_id", "request_id"]}) + "\n"
        + json.dumps(["e0002", "r2"]) + "\n"
        + json.dumps(_env(3)) + "\n"
    )
    j = Journal(tmp_path)
    sink = Sink()
    res = await j.replay(sink)
    assert sink.rows == [{"request_id": "r1", "gone_column": 5, "envelope_id": "e0001"},
                         {"envelope_id": "e0002", "request_id": "r2"}, _env(3)]
    assert res.skipped_lines == 1
    j.close()


async def test_a_segment_goes_once_all_its_rows_are_settled_and_the_next_commit_starts_another(tmp_path):
    j = Journal(tmp_path, COLUMNS)
    a = j.commit([_row(0), _row(1)])
    assert j.settle(a, 1) == []
    assert len(_jsonl(tmp_path)) == 1
    done = j.settle(a, 1)
    assert done == [a]
    j.delete(done)
    assert _jsonl(tmp_path) == [] and j.disk_bytes() == 0
    b = j.commit([_row(2)])
    assert b is not a and len(_jsonl(tmp_path)) == 1
    assert _lines(_jsonl(tmp_path)[0])[0] == {"journal_columns": list(COLUMNS)}
    j.delete(j.settle(b, 1))
    j.close()
    assert list(tmp_path.iterdir()) == []


async def test_a_large_segment_is_retired_and_the_journal_stays_bounded_while_rows_get_in(tmp_path):
    j = Journal(tmp_path, COLUMNS, max_segment_bytes=1000)
    in_flight = []
    for i in range(200):
        in_flight.append((j.commit([_row(i)]), 1))
        # The ledger keeps up four commits behind; each settlement may free a retired segment.
        if len(in_flight) > 4:
            seg, n = in_flight.pop(0)
            j.delete(j.settle(seg, n))
        # The stated bound: the rows not yet in (four), one segment's size and one commit, a header a file.
        header = len(json.dumps({"journal_columns": COLUMNS}, separators=(",", ":"))) + 1
        bound = 1000 + (4 + 1) * (len(_row(i)) + 1) + 2 * header
        assert j.disk_bytes() <= bound, "rows in the ledger do not pile up on disk"
        assert sum(p.stat().st_size for p in _jsonl(tmp_path)) == j.disk_bytes()
        assert len(_jsonl(tmp_path)) <= 2
    for seg, n in in_flight:
        j.delete(j.settle(seg, n))
    assert _jsonl(tmp_path) == []
    j.close()


async def test_abandoned_rows_stay_for_a_replay_and_settled_ones_are_not_sent_again(tmp_path):
    j = Journal(tmp_path, COLUMNS, max_segment_bytes=60)
    first = j.commit([_row(0), _row(1)])  # 1 header + 2 rows: past 60 bytes, retired at the next commit
    second = j.commit([_row(2)])
    assert first is not second
    j.delete(j.settle(first, 1))  # one of the first two is in the ledger...
    j.abandon(first)  # ...the other's insert failed: the ledger is down
    j.abandon(second)
    assert j.pending and len(_jsonl(tmp_path)) == 2
    sink = Sink()
    await j.replay(sink, own_only=True)
    assert sorted(r["envelope_id"] for r in sink.rows) == ["e0000", "e0001", "e0002"]
    assert _jsonl(tmp_path) == [] and not j.pending
    j.abandon(first)  # a late failure report for rows already replayed changes nothing
    assert not j.pending
    j.close()


async def test_close_keeps_what_is_not_all_in_for_the_next_start(tmp_path):
    j = Journal(tmp_path, COLUMNS)
    j.commit([_row(0)])
    j.close()
    assert len(_jsonl(tmp_path)) == 1
    j2 = Journal(tmp_path, COLUMNS)
    seg = j2.commit([_row(1)])
    j2.commit([_row(2)])
    j2.settle(seg, 1)
    j2.close()
    assert len(_jsonl(tmp_path)) == 2
    sink = Sink()
    await Journal(tmp_path).replay(sink)
    assert [r["envelope_id"] for r in sink.rows] == ["e0000", "e0001", "e0002"]


async def test_appends_go_to_a_spill_of_their_own_so_a_replay_leaves_committed_rows_alone(tmp_path):
    j = Journal(tmp_path, COLUMNS)
    seg = j.commit([_row(0)])
    j.append_nowait(_env(1))
    await j.append([_env(2)])
    assert len(_jsonl(tmp_path)) == 2 and j.pending
    sink = Sink()
    await j.replay(sink, own_only=True)
    assert [r["envelope_id"] for r in sink.rows] == ["e0001", "e0002"]
    assert not j.pending and len(_jsonl(tmp_path)) == 1, "the committed row's segment is still live"
    j.delete(j.settle(seg, 1))
    assert _jsonl(tmp_path) == []
    j.close()


async def test_two_journals_made_in_the_same_millisecond_never_share_a_file(tmp_path, monkeypatch):
    monkeypatch.setattr("gateway.store.journal.time.time", lambda: 1_700_000_000.0)
    a, b = Journal(tmp_path, COLUMNS), Journal(tmp_path, COLUMNS)
    a.commit([_row(1)])
    b.commit([_row(2)])
    assert len(_jsonl(tmp_path)) == 2
    a.close()
    b.close()
