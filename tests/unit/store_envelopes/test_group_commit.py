"""The group commit on its own: at most one write per interval however busy, at once when idle or
asked, everything at close with a last fsync, and a refused write still handed on."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from gateway.store.group_commit import SLICE_CHARS, GroupCommit


class Disk:
    """A journal stand-in recording each write and when it came, and each fsync (from which thread)."""

    def __init__(self, fail: bool = False) -> None:
        self.writes: list[list[str]] = []
        self.times: list[float] = []
        self.synced = 0  # writes covered by the last fsync
        self.sync_threads: set[str] = set()
        self.fail = fail

    def write(self, rows: list[str]) -> str:
        if self.fail:
            raise OSError("disk full")
        self.writes.append(list(rows))
        self.times.append(time.monotonic())
        return f"seg{len(self.writes)}"

    def sync_written(self) -> None:
        self.synced = len(self.writes)
        self.sync_threads.add(threading.current_thread().name)


class Harness:
    def __init__(self, interval_s: float, *, fail: bool = False) -> None:
        self.disk = Disk(fail)
        self.delivered: list[tuple[str | None, list[str]]] = []
        self.gc = GroupCommit(self.disk, interval_s, lambda seg, rows: self.delivered.append((seg, rows)))  # type: ignore[arg-type]
        self.gc.start(asyncio.get_running_loop())

    def put(self, row: str) -> None:
        # What the writer's request path does.
        self.gc.queue.append(row)
        if len(self.gc.queue) == 1:
            self.gc.arm()

    def rows(self) -> list[str]:
        return [r for _, rows in self.delivered for r in rows]

    async def until(self, n: int, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.rows()) < n:
            assert time.monotonic() < deadline, f"{len(self.rows())} of {n} rows delivered"
            await asyncio.sleep(0.002)


async def test_a_busy_queue_is_written_at_most_once_per_interval_every_row_in_order_then_fsynced() -> None:
    h = Harness(0.05)
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < 0.4:
        for _ in range(5):
            h.put(f"r{n}")
            n += 1
        await asyncio.sleep(0.001)
    await h.until(n)
    assert h.rows() == [f"r{i}" for i in range(n)]
    gaps = [b - a for a, b in zip(h.disk.times, h.disk.times[1:], strict=False)]
    assert min(gaps) >= 0.045, gaps  # never more often than the interval
    assert len(h.disk.writes) <= 0.4 / 0.05 + 2
    assert [seg for seg, _ in h.delivered] == [f"seg{i + 1}" for i in range(len(h.delivered))]
    await h.gc.aclose()
    assert h.disk.synced == len(h.disk.writes)
    assert h.disk.sync_threads == {"gateway-journal-sync"}, "the fsync is off the event loop"


async def test_an_idle_queue_is_written_at_once_and_a_flush_need_not_wait() -> None:
    h = Harness(10.0)  # an interval far longer than the test
    h.put("first")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert h.rows() == ["first"], "nothing was written for an interval: the first row goes at once"
    h.put("second")  # within the interval of the first write: waits for it...
    await asyncio.sleep(0.05)
    assert h.rows() == ["first"]
    h.gc.commit()  # ...unless someone waits for it (a flush)
    assert h.rows() == ["first", "second"]
    await h.gc.aclose()


async def test_close_writes_everything_queued_and_fsyncs_it() -> None:
    h = Harness(10.0)
    h.put("warm")
    await h.until(1)
    for i in range(50):
        h.put(f"r{i}")
    await h.gc.aclose()
    assert h.rows() == ["warm", *(f"r{i}" for i in range(50))]
    assert h.disk.synced == 2
    assert not h.gc._syncer._thread.is_alive()
    h.put("late")  # after close nothing arms a timer: the writer's shutdown journals such rows itself
    await asyncio.sleep(0.01)
    assert h.rows()[-1] == "r49"


async def test_a_write_the_disk_refuses_still_hands_the_rows_on() -> None:
    h = Harness(0.01, fail=True)
    h.put("a")
    h.put("b")
    await h.until(2)
    assert h.delivered == [(None, ["a", "b"])]
    assert h.gc.errors == 1 and h.gc.committed == 0
    await h.gc.aclose()


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        GroupCommit(Disk(), 0, lambda seg, rows: None)  # type: ignore[arg-type]


async def test_large_rows_are_written_in_slices_one_per_turn_of_the_loop() -> None:
    h = Harness(10.0)
    h.put("warm")
    await h.until(1)
    big = "x" * (SLICE_CHARS // 2)
    for _ in range(6):
        h.put(big)
    h.gc.commit()  # a flush: the first slice at once, the others in the next turns
    assert [len(w) for w in h.disk.writes] == [1, 2]
    await h.until(7)
    assert [len(w) for w in h.disk.writes] == [1, 2, 2, 2]
    for _ in range(3):
        h.put(big)
    await h.gc.aclose()  # shutdown writes every slice before it returns
    assert [len(w) for w in h.disk.writes] == [1, 2, 2, 2, 2, 1]
    assert all(rows for rows in h.disk.writes), "never an empty write"
