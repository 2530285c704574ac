"""The journal's group commit: every envelope row is in the journal within one commit interval.

The request path only appends its row (already a JSON text) to a deque and, when the deque was
empty, arms a timer for the end of the interval since the last commit. The timer's callback takes
every row queued since and appends them to the journal in one write, then hands them on for the
ledger insert. Once written, a row is in the kernel's page cache: it survives the process being
killed (SIGKILL included), so a crash loses at most the rows of the last commit interval. A sync
thread then fsyncs what was written (so a power loss loses at most the interval and one fsync),
at most once per commit, coalescing when the disk is slow.

Why the write is made on the event loop and only the fsync on a thread: the write is a copy into
the page cache (~50 us per commit at 4,000 requests/s), while every time a second thread takes the
GIL behind a busy loop costs both threads rounds of futex wake-ups and context switches. A thread
that made the write too (taking the GIL five times a commit) cost 20-40 us of CPU per request at
4,000 requests/s (measured on 2 cores); this way the thread takes it twice a commit (when woken,
after the fsync), and a request costs about what it did without a journal.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable

from gateway.store.journal import Journal, Segment

log = logging.getLogger("gateway.store.journal")

# Characters of rows per write: a commit of more (envelopes with large bodies) is written in slices,
# one per turn of the loop, so no write holds the loop for more than about a millisecond.
SLICE_CHARS = 1 << 20


class GroupCommit:
    """Moves rows from `queue` into `journal` at most once per `interval_s`, then to `deliver`.

    `deliver(segment, rows)` is called on the loop with the segment the rows were written to, or
    None when the disk refused them (they are not lost: the caller still holds them)."""

    def __init__(self, journal: Journal, interval_s: float,
                 deliver: Callable[[Segment | None, list[str]], None]) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.queue: deque[str] = deque()
        self._journal = journal
        self._interval = interval_s
        self._deliver = deliver
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.Handle | None = None
        self._next = 0.0  # loop time before which the next commit waits
        self._syncer = _Syncer(journal)
        self._last_error_log = float("-inf")
        self.commits = 0
        self.committed = 0  # rows written
        self.errors = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._syncer.start()
        if self.queue:
            self.arm()

    def arm(self) -> None:
        """Rows arrived in an empty queue (the request path calls this): commit them when the
        interval since the last commit is up, at once if it already is."""
        loop = self._loop
        if loop is None or self._timer is not None:
            return  # not started (start() arms), or armed already
        self._timer = loop.call_at(self._next, self.commit)

    def commit(self) -> None:
        """Write what is queued now (the timer's callback; also a flush's): a slice of at most
        SLICE_CHARS, the rest in the next turns of the loop."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        queue = self.queue
        if not queue:
            return
        if self._loop is not None:
            self._next = self._loop.time() + self._interval
        self._write_slice()
        if queue and self._loop is not None:
            self._timer = self._loop.call_soon(self._more)

    def _more(self) -> None:
        self._timer = None
        self._write_slice()
        if self.queue and self._loop is not None:
            self._timer = self._loop.call_soon(self._more)

    def _write_slice(self) -> None:
        queue = self.queue
        if not queue:
            return
        rows: list[str]
        if sum(map(len, queue)) <= SLICE_CHARS:  # the usual commit: all of it, without a loop per row
            rows = list(queue)
            queue.clear()
        else:
            rows = []
            size = 0
            while queue and size < SLICE_CHARS:
                row = queue.popleft()
                rows.append(row)
                size += len(row)
        segment: Segment | None = None
        try:
            segment = self._journal.write(rows)
        except OSError as e:
            self.errors += 1
            now = time.monotonic()
            if now - self._last_error_log > 10.0:
                self._last_error_log = now
                log.error("journal unwritable (%s): envelopes go to the ledger unjournaled", e)
        else:
            self.commits += 1
            self.committed += len(rows)
            self._syncer.request()
        self._deliver(segment, rows)

    async def aclose(self) -> None:
        """Write what is queued, fsync everything written, and end the sync thread."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop = None  # nothing is scheduled from now on: rows queued later wait for the caller
        while self.queue:
            self._write_slice()
        await asyncio.to_thread(self._syncer.stop)


class _Syncer:
    """The thread that fsyncs what the group commit wrote, off the event loop.

    Requests come through a SimpleQueue rather than a threading.Event: its put() and get() are C
    calls, where an Event's set() and wait() run its Condition's Python code with the GIL held (on
    the loop for every commit, and on this thread each time it wakes behind a busy loop)."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self._requests: queue.SimpleQueue[bool] = queue.SimpleQueue()  # True: the last one
        self._thread = threading.Thread(target=self._run, name="gateway-journal-sync", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request(self) -> None:
        self._requests.put(False)

    def stop(self) -> None:
        """A last fsync, then the thread ends (blocking: call off the loop)."""
        if self._thread.is_alive():
            self._requests.put(True)
            self._thread.join()
        else:
            self._journal.sync_written()

    def _run(self) -> None:
        requests = self._requests
        while True:
            stopping = requests.get()
            # Requests that came meanwhile are covered by this fsync: it takes all that is written.
            while not requests.empty():
                stopping = requests.get() or stopping
            try:
                self._journal.sync_written()
            except OSError as e:  # the rows are in the page cache already; the next fsync retries
                log.error("journal fsync failed: %s", e)
            if stopping:
                return
