"""Envelopes to the ledger: off the hot path, journaled first, then inserted in batches.

`submit_envelope()` (or `submit()`, for a mapping) is all the request path does: the envelope
becomes a row and the row one JSON array (~10 us, so every request pays for its own and no batch
ever holds the event loop), then a deque append (or, when the writer already holds `queue_size`
envelopes, one buffered line to the journal).

The journal's group commit (group_commit.py) takes that deque: at most once per
`commit_interval_s` (20 ms by default) it appends every row queued since to the journal in one
write (a sync thread fsyncs it), then hands the rows to this writer. So a crash, even SIGKILL,
loses at most the envelopes of the last commit interval; the next start replays what the journal
holds and the ledger lacks (before start() returns). A single writer task takes the committed rows
in batches of up to `batch_size`, or whatever came within `flush_interval_s`, and inserts each
with ON CONFLICT (envelope_id) DO NOTHING, so a row sent twice (a lost commit acknowledgement, a
journal replayed after its rows got in) lands once. Each batch in tells the journal, which
deletes a file once all its rows are in.

When the ledger fails, the batch's rows are left to the journal (already on disk) and the writer
turns degraded: later rows are left there at once, and every `retry_interval_s` it pings the
ledger; once that answers, it replays the journal (its own files and those of dead processes) and
inserts directly again. A row the database itself rejects (a constraint, a bad value) is not an
outage: it is set aside in the journal's `.rejected` file with the reason, and the rest of its
batch goes in. `aclose()` (a clean shutdown) commits, inserts or journals everything: none is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import exc

from gateway.store.envelope_fields import Envelope
from gateway.store.envelope_rows import (
    ENVELOPE_KEYS,
    EnvelopeRejected,
    batch_statements,
    envelope_row_json,
    normalize_envelope,
    row_from_json,
    row_json,
    values_row_json,
)
from gateway.store.group_commit import GroupCommit
from gateway.store.journal import Journal, Segment
from gateway.store.ledger import Ledger, LedgerUnavailable

__all__ = ["ENVELOPE_KEYS", "EnvelopeRejected", "EnvelopeWriter", "normalize_envelope"]

log = logging.getLogger("gateway.store.envelopes")

# How often a healthy writer looks for journal files that dead processes left behind.
SWEEP_INTERVAL_S = 60.0
# Journal lines prepared per turn of the event loop when they are replayed (~10 us each).
_SLICE = 16
PING_TIMEOUT_S = 1.0

def _rejected_by_database(e: BaseException) -> bool:
    """True when the database answered and refused the data (not an outage): retrying will not help."""
    cause = e.__cause__ if isinstance(e, LedgerUnavailable) else e
    if isinstance(cause, exc.IntegrityError | exc.DataError | sqlite3.IntegrityError | sqlite3.DataError):
        return True
    state = getattr(getattr(cause, "orig", None), "sqlstate", None)
    # SQLSTATE class 22 is "data exception", 23 "integrity constraint violation".
    return isinstance(state, str) and state[:2] in ("22", "23")


def _jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime | date) else v) for k, v in row.items()}


@dataclass(slots=True)
class _Chunk:
    """Committed rows on their way to the ledger, and the journal segment that holds them (None if
    the journal could not take them)."""

    segment: Segment | None
    rows: list[str]


class EnvelopeWriter:
    """The ledger's envelope writer: one per process, started in the app's lifespan."""

    def __init__(
        self,
        ledger: Ledger,
        journal_dir: Path,
        *,
        queue_size: int = 10_000,
        batch_size: int = 256,
        flush_interval_s: float = 0.2,
        retry_interval_s: float = 1.0,
        commit_interval_s: float = 0.02,
    ) -> None:
        if queue_size < 1 or batch_size < 1 or commit_interval_s <= 0:
            raise ValueError("queue_size, batch_size and commit_interval_s must be positive")
        self._ledger = ledger
        self.journal = Journal(journal_dir, ENVELOPE_KEYS)
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._flush_interval = flush_interval_s
        self._retry_interval = retry_interval_s
        self._backend = ledger.backend
        # Each queued envelope as its row in JSON (`row_json`): what the journal and a batch insert
        # take as it is, until the group commit writes it.
        self._group = GroupCommit(self.journal, commit_interval_s, self._on_committed)
        self._buf: deque[str] = self._group.queue
        self._commit_wake = self._group.arm
        # Committed rows waiting for the ledger insert.
        self._ready: deque[_Chunk] = deque()
        self._ready_rows = 0
        # Envelopes that cannot become rows, with the reason, for the journal's .rejected file.
        self._bad: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Envelopes put in the queue; of those, now in the database, left to the journal, or in the
        # rejected file. The difference is what this writer holds in memory, bounded by queue_size.
        self._submitted = 0
        self._settled = 0
        self._flushing = 0
        self._closing = False
        self._closed = False
        self._degraded = False
        self.replayed_at_start = False
        self._next_retry = 0.0
        self._next_sweep = 0.0
        self._last_overflow_log = self._last_fail_log = float("-inf")
        self._written = self._journaled = self._replayed = self._db_errors = self._rejected = 0
        self._overflowed = 0

    # -- the hot path ------------------------------------------------------------------------------

    def submit(self, envelope: dict[str, Any]) -> None:
        """Hand an envelope over; never blocks on the database, never raises."""
        try:
            if not envelope.get("envelope_id"):
                # Assigned before the first write attempt, so every retry and replay carries it.
                envelope = {**envelope, "envelope_id": uuid.uuid4().hex}
            if self._closing or self._submitted - self._settled >= self._queue_size:
                self._overflow(envelope)
                return
            self._enqueue(envelope)
        except Exception:
            log.exception("envelope submit failed")

    def submit_envelope(self, envelope: Envelope) -> None:
        """`submit(envelope._asdict())`, for the envelope of every request: its row is made straight
        from the values; the dict only when it cannot be (overflow, a value to convert)."""
        try:
            # (An envelope without its id is not plain either: submit assigns one.)
            if not self._closing and self._submitted - self._settled < self._queue_size:
                row = values_row_json(envelope, self._backend)
                if row is not None:
                    self._queue_row(row)
                    return
            self.submit(envelope._asdict())
        except Exception:
            log.exception("envelope submit failed")

    def _enqueue(self, envelope: dict[str, Any]) -> None:
        """Queue the envelope as its row; one that cannot become a row waits for the .rejected file."""
        try:
            row = envelope_row_json(envelope, self._backend)
        except Exception as e:
            self._submitted += 1
            self._bad.append({"reason": str(e), "envelope": envelope})
            self._wake.set()
            return
        self._queue_row(row)

    def _queue_row(self, row: str) -> None:
        self._submitted += 1
        buf = self._buf
        buf.append(row)
        if len(buf) == 1:
            self._commit_wake()

    def _overflow(self, envelope: dict[str, Any]) -> None:
        try:
            self.journal.append_nowait(envelope)
        except Exception as e:
            if self._closed:
                log.critical("envelope after shutdown and journal unwritable: lost (%s)", e)
                return
            # The disk refused too: keep it in memory past the bound rather than lose it.
            log.error("envelope queue full and journal unwritable (%s): keeping it in memory", e)
            self._enqueue(envelope)
            self._wake.set()
            return
        self._journaled += 1
        self._overflowed += 1
        now = time.monotonic()
        if now - self._last_overflow_log > 10.0 and not self._closing:
            self._last_overflow_log = now
            log.warning("envelope queue full (%d): overflowing to the journal", self._queue_size)
        if self._closed:
            self.journal.close()  # nobody will replay it in this process: release it now
        elif self._task is not None:
            self._wake.set()  # so the writer replays it soon

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Replay journal files left behind (by this or a dead process), then start the group commit
        and the writer task. Once this returns, every envelope a dead process journaled is in the
        ledger (`replayed_at_start`), unless the ledger was down: then the writer starts degraded
        and replays when the ledger is back.
        """
        if self._task is not None:
            return
        loop = asyncio.get_running_loop()
        self._next_sweep = loop.time() + SWEEP_INTERVAL_S
        self.replayed_at_start = await self._replay(own_only=False)
        if not self.replayed_at_start:
            self._enter_degraded("the journal replay at start failed")
        self._group.start(loop)
        self._task = loop.create_task(self._run(), name="gateway-envelope-writer")
        self._task.add_done_callback(self._writer_done)

    async def flush(self) -> None:
        """Return once everything submitted so far is in the database or (fsync'd) in the journal."""
        target = self._submitted
        if self._settled < target:
            if self._task is None:
                raise RuntimeError("EnvelopeWriter.flush() before start()")
            self._flushing += 1
            try:
                self._group.commit()
                self._wake.set()
                while self._settled < target and not self._task.done():
                    self._progress.clear()
                    await self._progress.wait()
            finally:
                self._flushing -= 1
        await self.journal.sync()

    async def aclose(self) -> None:
        """Commit and drain everything (to the database, or the journal if it is down), stop, release
        the journal. Envelopes submitted from now on go to the journal, for the next start."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        task = self._task
        if task is not None:
            # Everything queued is written and handed over at once; the writer exits once it is all
            # in. A cancelled aclose() still lets it finish.
            await asyncio.shield(self._group.aclose())
            self._wake.set()
            await asyncio.shield(task)
        else:
            # Never started: nothing to write with, so everything goes to the journal.
            await self._set_aside_bad()
            if self._buf:
                await self._journal_rows([row_from_json(item) for item in self._buf])
                self._buf.clear()
        self._closed = True
        await asyncio.to_thread(self.journal.close)

    @property
    def stats(self) -> dict[str, Any]:
        g = self._group
        return {
            "queued": self._submitted - self._settled,
            "written": self._written,
            "journaled": self._journaled,
            "replayed": self._replayed,
            "db_errors": self._db_errors,
            "degraded": self._degraded,
            "overflowed": self._overflowed,
            "rejected": self._rejected,
            "committed": g.committed,
            "commits": g.commits,
            "commit_errors": g.errors,
        }

    # -- the writer task ---------------------------------------------------------------------------

    def _on_committed(self, segment: Segment | None, rows: list[str]) -> None:
        """On the loop: the committer has these rows on disk (segment), or failed to (None)."""
        if segment is not None and self._degraded:
            # The ledger is down: the journal keeps them until the replay.
            self.journal.abandon(segment)
            self._journaled += len(rows)
            self._settled += len(rows)
            self._progress.set()
            return
        idle = not self._ready_rows
        self._ready.append(_Chunk(segment, rows))
        self._ready_rows += len(rows)
        # The writer waits for the first rows (they start its flush interval), then for a full
        # batch: a wake-up for every commit in between only cost it a turn (measured: ~20k
        # instructions on the loop a commit).
        if idle or self._ready_rows >= self._batch_size or self._urgent():
            self._wake.set()

    def _writer_done(self, task: asyncio.Task[None]) -> None:
        self._progress.set()  # wakes flush() waiters if the writer ever ends
        if not task.cancelled() and task.exception() is not None:
            log.error("envelope writer stopped", exc_info=task.exception())

    async def _run(self) -> None:
        while True:
            try:
                batch = await self._next_batch()
                await self._set_aside_bad()
                if batch:
                    await self._persist(batch)
                if self._closing and self._buf:
                    self._group.commit()  # kept in memory while the disk refused (see _overflow)
                if self._closing and not self._buf and not self._ready:
                    await self._final_replay()
                    return
                await self._maintain()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Not expected (database errors are handled below): keep the writer alive.
                log.exception("envelope writer error")
                await asyncio.sleep(self._retry_interval)

    def _urgent(self) -> bool:
        return self._closing or self._flushing > 0

    def _idle_timeout(self) -> float | None:
        now = asyncio.get_running_loop().time()
        if self._degraded:
            return max(0.0, self._next_retry - now)
        if self.journal.pending:
            return self._flush_interval
        return max(0.0, self._next_sweep - now)

    async def _wait_wake(self, wait_s: float | None) -> bool:
        self._wake.clear()
        try:
            async with asyncio.timeout(wait_s):
                await self._wake.wait()
        except TimeoutError:
            return False
        return True

    async def _next_batch(self) -> list[_Chunk]:
        if not self._ready:
            if self._closing and not self._buf:
                return []
            if not await self._wait_wake(self._idle_timeout()) or not self._ready:
                return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._flush_interval
        while self._ready_rows < self._batch_size and not self._urgent():
            remaining = deadline - loop.time()
            if remaining <= 0 or not await self._wait_wake(remaining):
                break
        return self._take(self._batch_size)

    def _take(self, n: int) -> list[_Chunk]:
        """Up to n committed rows, in order, as chunks (the last one split off if need be)."""
        ready, out = self._ready, []
        while ready and n > 0:
            chunk = ready[0]
            if len(chunk.rows) <= n:
                out.append(ready.popleft())
            else:
                out.append(_Chunk(chunk.segment, chunk.rows[:n]))
                chunk.rows = chunk.rows[n:]
            n -= len(out[-1].rows)
            self._ready_rows -= len(out[-1].rows)
        return out

    async def _normalize(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        bad: list[dict[str, Any]] = []
        for i, env in enumerate(batch):
            if i and i % _SLICE == 0:
                await asyncio.sleep(0)  # let requests run: a whole batch at once stalls the loop for ms
            try:
                rows.append(normalize_envelope(env))
            except Exception as e:
                bad.append({"reason": str(e), "envelope": env})
        await self._reject(bad)
        return rows

    async def _reject(self, bad: list[dict[str, Any]]) -> None:
        if bad:
            self._rejected += len(bad)
            log.error("%d envelopes rejected (kept in the journal's .rejected file): %s", len(bad), bad[0]["reason"])
            await asyncio.to_thread(self.journal.reject, bad)

    async def _set_aside_bad(self) -> None:
        bad, self._bad = self._bad, []
        try:
            await self._reject(bad)
        finally:
            self._settled += len(bad)
            if bad:
                self._progress.set()

    async def _persist(self, batch: list[_Chunk]) -> None:
        items = [row for chunk in batch for row in chunk.rows]
        try:
            if not self._degraded:
                try:
                    self._written += await self._insert_items(items)
                except Exception as e:
                    self._db_errors += 1
                    self._enter_degraded(e)
                else:
                    await self._settle(batch)
                    return
            await self._leave_to_journal(batch)
        finally:
            self._settled += len(items)
            self._progress.set()

    async def _settle(self, batch: list[_Chunk]) -> None:
        """Tell the journal these rows are in: it empties or deletes the files that held them."""
        done: list[Segment] = []
        for chunk in batch:
            if chunk.segment is not None:
                done += self.journal.settle(chunk.segment, len(chunk.rows))
        if done:
            await asyncio.to_thread(self.journal.delete, done)

    async def _leave_to_journal(self, batch: list[_Chunk]) -> None:
        """The ledger cannot take these rows now: the journal keeps them for the replay."""
        unjournaled: list[str] = []
        for chunk in batch:
            if chunk.segment is None:
                unjournaled += chunk.rows
            else:
                self.journal.abandon(chunk.segment)
                self._journaled += len(chunk.rows)
        await self._journal_rows([row_from_json(item) for item in unjournaled])

    async def _journal_rows(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        lines = [_jsonable(r) for r in rows]
        while True:
            try:
                await self.journal.append(lines)
                self._journaled += len(rows)
                return
            except OSError as e:
                if self._closing:
                    log.critical("ledger down and journal unwritable at shutdown: %d envelopes lost: %s", len(rows), e)
                    return
                log.error("journal unwritable (%s): holding %d envelopes, retrying", e, len(rows))
            await asyncio.sleep(self._retry_interval)
            if await self._ledger.ping(PING_TIMEOUT_S):
                with contextlib.suppress(Exception):
                    self._written += await self._insert(rows)
                    return

    async def _maintain(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._degraded:
            if now >= self._next_retry:
                await self._recover()
        elif now >= self._next_sweep:
            await self._replay(own_only=False)
        elif self.journal.pending:
            await self._replay(own_only=True)

    async def _recover(self) -> None:
        self._next_retry = asyncio.get_running_loop().time() + self._retry_interval
        if not await self._ledger.ping(PING_TIMEOUT_S):
            return
        if await self._replay(own_only=False):
            self._degraded = False
            log.info("ledger back: journal replayed, writing envelopes directly again")

    async def _final_replay(self) -> None:
        # At shutdown with the ledger up, lines that overflowed earlier go in now rather than wait
        # for the next start; if it fails they stay in the journal for that.
        if not self._degraded and self.journal.pending:
            await self._replay(own_only=True)

    async def _replay(self, *, own_only: bool) -> bool:
        try:
            await self.journal.replay(self._insert_replayed, batch_size=self._batch_size, own_only=own_only)
        except Exception as e:
            self._db_errors += 1
            now = time.monotonic()
            if self._degraded and now - self._last_fail_log > SWEEP_INTERVAL_S:
                # Still failing while the ledger answers pings (not migrated? permissions?): say so.
                self._last_fail_log = now
                log.warning("journal replay failed, envelopes stay journaled: %s", e)
            self._enter_degraded(e)
            return False
        if not own_only:
            self._next_sweep = asyncio.get_running_loop().time() + SWEEP_INTERVAL_S
        return True

    def _enter_degraded(self, why: object) -> None:
        self._next_retry = asyncio.get_running_loop().time() + self._retry_interval
        if not self._degraded:
            self._degraded = True
            log.warning("ledger unavailable, journaling envelopes until it is back: %s", why)

    # -- inserting ---------------------------------------------------------------------------------

    async def _insert_replayed(self, batch: list[dict[str, Any]]) -> None:
        self._replayed += await self._insert(await self._normalize(batch))

    async def _insert(self, rows: list[dict[str, Any]]) -> int:
        """Insert normalised rows (from the journal); see `_insert_items`."""
        items: list[str] = []
        for i in range(0, len(rows), _SLICE):
            items += [row_json(r, self._backend) for r in rows[i:i + _SLICE]]
            await asyncio.sleep(0)
        return await self._insert_items(items)

    async def _insert_items(self, items: list[str]) -> int:
        """Insert a batch in one transaction; rows the database refuses are set aside one by one.

        Returns how many rows the ledger now holds (inserted, or already there). Raises LedgerUnavailable
        when the database is unreachable: nothing of the batch is then known to be in, so the caller
        journals all of it, and the replay's ON CONFLICT skips whatever was.
        """
        if not items:
            return 0
        try:
            await self._ledger.write_batch(batch_statements(items, self._backend))
        except LedgerUnavailable as e:
            if not _rejected_by_database(e):
                raise
            return await self._insert_each(items)
        return len(items)

    async def _insert_each(self, items: list[str]) -> int:
        ok = 0
        for item in items:
            try:
                await self._ledger.write_batch(batch_statements([item], self._backend))
            except LedgerUnavailable as e:
                if not _rejected_by_database(e):
                    raise
                self._rejected += 1
                row = row_from_json(item)
                log.error("envelope %s rejected by the ledger: %s", row["envelope_id"], e)
                await asyncio.to_thread(self.journal.reject, [{"reason": str(e), "envelope": row}])
                continue
            ok += 1
        return ok
