"""The journal's group commit: every envelope row is on disk within one commit interval.

One thread per envelope writer, so the event loop never writes or waits for the disk. The request
path only appends its row (already a JSON text) to a deque, and wakes the thread when the deque
was empty. The thread lets the rest of the commit interval since its last commit go by (so it
commits at most once per interval however busy the gateway is, one write and one fsync for every
row of that interval), takes every row queued since, commits them to the journal, and only then
hands them to the event loop for the ledger insert: the ledger never holds a row the journal did
not. A crash (even SIGKILL) loses at most the rows queued in the last interval and those of the
commit in progress. A commit comes early when the deque is large (bounding the memory and the
write) or when someone waits for it (a flush, shutdown); an idle gateway's first row is committed
at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger("gateway.store.journal")

T = TypeVar("T")

# Rows that make a commit come before its interval is up.
LARGE_GROUP = 1024


class GroupCommitter(Generic[T]):
    """Moves rows from `queue` through `commit` (on its own thread) to `deliver` (on the loop).

    `commit(rows)` writes and fsyncs them and returns where they went; `deliver(where, rows)` is then
    called on `loop`, with `where` None when the commit failed (the rows are not on disk, but they
    are not lost either: the caller still holds them).
    """

    def __init__(self, queue: deque[str], commit: Callable[[list[str]], T],
                 deliver: Callable[[T | None, list[str]], None], loop: asyncio.AbstractEventLoop,
                 interval_s: float, *, large_group: int = LARGE_GROUP) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self._queue = queue
        self._commit = commit
        self._deliver = deliver
        self._loop = loop
        self._interval = interval_s
        self.large_group = large_group
        self._event = threading.Event()
        self._urgent = False
        self._stopping = False
        self._next = 0.0  # monotonic time before which the next commit waits
        self._last_error_log = float("-inf")
        self.commits = 0
        self.committed = 0  # rows committed
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="gateway-journal-commit", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Rows arrived in an empty queue, or the queue grew large (the request path calls this)."""
        self._event.set()

    def commit_now(self) -> None:
        """Commit what is queued without waiting out the interval (someone waits for it)."""
        self._urgent = True
        self._event.set()

    def stop(self) -> None:
        """Commit everything queued, deliver it, and end the thread (blocking: call off the loop)."""
        self._stopping = True
        self._event.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        queue, event = self._queue, self._event
        while True:
            # Cleared before the queue is looked at: a row appended after the look sets it again.
            event.clear()
            if not queue:
                if self._stopping:
                    return
                event.wait()
                continue
            if not (self._urgent or self._stopping) and len(queue) < self.large_group:
                delay = self._next - time.monotonic()
                if delay > 0:
                    event.wait(delay)  # cut short by a large queue, a flush or shutdown
            self._urgent = False
            rows = [queue.popleft() for _ in range(len(queue))]
            self._next = time.monotonic() + self._interval
            if not self._group(rows):
                return

    def _group(self, rows: list[str]) -> bool:
        where: T | None = None
        try:
            where = self._commit(rows)
            self.commits += 1
            self.committed += len(rows)
        except OSError as e:
            self.errors += 1
            now = time.monotonic()
            if now - self._last_error_log > 10.0:
                self._last_error_log = now
                log.error("journal unwritable (%s): envelopes go to the ledger unjournaled", e)
        try:
            self._loop.call_soon_threadsafe(self._deliver, where, rows)
        except RuntimeError:  # the loop is closed: the process is ending without shutting down
            log.critical("envelope writer gone: %d journaled envelopes left for the next start", len(rows))
            return False
        return True
