"""The group commit on its own: one commit per interval however busy, at once when idle or asked,
early when the queue is large, everything at stop, and a failed commit still delivered."""

from __future__ import annotations

import asyncio
import time
from collections import deque

import pytest

from gateway.store.group_commit import GroupCommitter


class Disk:
    """A commit callback recording each group and when it came; it can be told to fail."""

    def __init__(self, fail: bool = False) -> None:
        self.groups: list[list[str]] = []
        self.times: list[float] = []
        self.fail = fail

    def __call__(self, rows: list[str]) -> str:
        if self.fail:
            raise OSError("disk full")
        self.groups.append(rows)
        self.times.append(time.monotonic())
        return f"seg{len(self.groups)}"


class Committer:
    def __init__(self, interval_s: float, *, large_group: int = 1024, fail: bool = False) -> None:
        self.queue: deque[str] = deque()
        self.disk = Disk(fail)
        self.delivered: list[tuple[str | None, list[str]]] = []
        self.gc = GroupCommitter(self.queue, self.disk, self._deliver, asyncio.get_running_loop(), interval_s,
                                 large_group=large_group)
        self.gc.start()

    def _deliver(self, where: str | None, rows: list[str]) -> None:
        self.delivered.append((where, rows))

    def put(self, row: str) -> None:
        # What the writer's request path does.
        self.queue.append(row)
        if len(self.queue) in (1, self.gc.large_group):
            self.gc.wake()

    def rows(self) -> list[str]:
        return [r for _, rows in self.delivered for r in rows]

    async def until(self, n: int, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.rows()) < n:
            assert time.monotonic() < deadline, f"{len(self.rows())} of {n} rows delivered"
            await asyncio.sleep(0.002)

    async def stop(self) -> None:
        await asyncio.to_thread(self.gc.stop)


async def test_a_busy_queue_is_committed_at_most_once_per_interval_every_row_in_order() -> None:
    c = Committer(0.05)
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < 0.4:
        for _ in range(5):
            c.put(f"r{n}")
            n += 1
        await asyncio.sleep(0.001)
    await c.until(n)
    await c.stop()
    assert c.rows() == [f"r{i}" for i in range(n)]
    gaps = [b - a for a, b in zip(c.disk.times, c.disk.times[1:], strict=False)]
    assert min(gaps) >= 0.045, gaps  # never more often than the interval
    assert len(c.disk.groups) <= 0.4 / 0.05 + 2
    assert [w for w, _ in c.delivered] == [f"seg{i + 1}" for i in range(len(c.delivered))]


async def test_an_idle_committer_commits_a_lone_row_at_once() -> None:
    c = Committer(10.0)  # an interval far longer than the test
    c.put("first")
    await c.until(1, timeout_s=1.0)
    await asyncio.sleep(0.05)
    c.put("second")  # within the interval of the first commit: waits for it...
    await asyncio.sleep(0.1)
    assert c.rows() == ["first"]
    c.gc.commit_now()  # ...unless someone waits for it (a flush)
    await c.until(2, timeout_s=1.0)
    await c.stop()


async def test_a_large_queue_is_committed_before_the_interval_is_up() -> None:
    c = Committer(10.0, large_group=100)
    c.put("warm")
    await c.until(1)
    for i in range(100):
        c.put(f"r{i}")
    await c.until(101, timeout_s=1.0)
    assert [len(g) for g in c.disk.groups] == [1, 100]
    await c.stop()


async def test_stop_commits_and_delivers_everything_queued() -> None:
    c = Committer(10.0)
    c.put("warm")
    await c.until(1)
    for i in range(50):
        c.put(f"r{i}")
    await c.stop()
    await asyncio.sleep(0)  # the deliveries were handed to the loop before the thread ended
    assert c.rows() == ["warm", *(f"r{i}" for i in range(50))]
    assert not c.gc._thread.is_alive()


async def test_a_commit_the_disk_refuses_still_hands_the_rows_on() -> None:
    c = Committer(0.01, fail=True)
    c.put("a")
    c.put("b")
    await c.until(2)
    assert c.delivered == [(None, ["a", "b"])]
    assert c.gc.errors == 1 and c.gc.committed == 0
    await c.stop()


def test_the_interval_must_be_positive() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="interval_s"):
            GroupCommitter(deque(), lambda rows: None, lambda where, rows: None, loop, 0)
    finally:
        loop.close()
