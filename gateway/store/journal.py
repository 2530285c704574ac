"""The local append-only journal: every envelope is on disk here before the ledger has it.

JSON lines in files (segments) of one process each (`<host>-<pid>-<start ms>-<seq>.jsonl`) inside
a 0700 directory. The owning process holds an exclusive `flock` on each of its files for as
long as the file exists, so a replay (by any process) takes exactly the files whose owner is gone
or done: a live process's file cannot be locked, a dead process's lock died with it.

Three ways in:
- `write()`: the group commit (see group_commit.py): a list of rows as `row_json` made them (JSON
  arrays in the ledger's column order) in one write; `sync_written()`, on the sync thread, fsyncs
  them. The first row array of a file follows a header line naming the columns, so a replay by a
  later version (with another column list) still maps every value to its column.
- `append()`: envelopes (dicts), written and fsync'd in a worker thread.
- `append_nowait()`: one envelope (a dict), a buffered write handed to the OS on the calling thread
  with no fsync; the hot path's overflow when the writer holds too much. `sync()` makes it durable.
The appended lines are held nowhere else: they go to a segment of their own (the spill), which a
replay takes whole, so it never sends the committed rows again.

What happens to a line afterwards is the writer's to say. `settle()`: its rows are in the ledger.
`abandon()`: some rows of the segment are held nowhere else now (the ledger was down): the file
must be replayed before it may go. A segment is deleted as soon as every row in it is in the
ledger; one that grows past MAX_SEGMENT_BYTES is retired for a fresh one first. Rows go into the
ledger in the order they were committed, so the rows already in it that are still on disk are all
in the oldest segment: while the ledger keeps up, the journal holds the rows not yet in the ledger
plus at most MAX_SEGMENT_BYTES (and one commit). Abandoned segments wait for a replay.

`replay()` hands the lines back in batches to an insert callback and deletes each file once all of
it is in; an insert that fails leaves the file for the next replay (the insert is idempotent, so
lines that did get in are harmless to send again). Lines that cannot be parsed (the torn last line
of a process that died mid-write) are skipped with a warning and kept in a `.rejected` file.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import orjson

log = logging.getLogger("gateway.store.journal")

SUFFIX = ".jsonl"
REJECTED_SUFFIX = ".rejected"  # does not match *.jsonl: never replayed, kept for an operator

ReplayInsert = Callable[[list[dict[str, Any]]], Awaitable[None]]


def _default(o: Any) -> Any:
    # orjson writes datetimes (ISO 8601), dates, UUIDs and dataclasses itself. Anything else is kept
    # as text rather than failing: a line the writer cannot encode would be an envelope lost.
    if isinstance(o, Decimal):
        return str(o)
    if isinstance(o, datetime | date):  # only reached by the fallback encoder below
        return o.isoformat()
    if isinstance(o, set | frozenset | tuple):
        return list(o)
    if isinstance(o, bytes):
        return o.decode("utf-8", "replace")
    return str(o)


def encode(envelope: dict[str, Any]) -> bytes:
    """One journal line (newline included); never fails for a dict."""
    try:
        return orjson.dumps(envelope, default=_default, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        # What orjson refuses (an integer past 64 bits, a recursion): the slow encoder takes anything.
        return (json.dumps(envelope, default=_default, ensure_ascii=False) + "\n").encode("utf-8", "replace")


def _safe_host() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64] or "host"


@dataclass(slots=True, eq=False)
class _Held:
    """A journal file open and exclusively locked by this process: one of its own segments (open
    for appending and reading), or another process's file taken for replay."""

    path: Path
    file: IO[bytes]
    rows: int = 0  # lines written to it
    inserted: int = 0  # of those, settled by the writer (in the ledger, or set aside)
    size: int = 0  # bytes written to it
    header: bool = False  # the column header is written (row arrays may follow)
    abandoned: bool = False  # it holds lines no one holds in memory: replayed before it goes
    gone: bool = False  # deleted (replayed, or every row in the ledger)


# What `commit()` returns: the segment the rows went to, for `settle()` and `abandon()`.
Segment = _Held


@dataclass(frozen=True, slots=True)
class ReplayResult:
    envelopes: int  # lines handed to the insert callback
    files: int  # files fully replayed and deleted
    skipped_lines: int  # unparseable lines (kept in a .rejected file)


# The key of a segment's header line: {"journal_columns": [...]} names the values of its row arrays.
HEADER_KEY = "journal_columns"
# A segment past this size is retired for a fresh one (and deleted once all its rows are in the ledger).
MAX_SEGMENT_BYTES = 8 * 1024 * 1024


class Journal:
    """One process's journal in `directory`; also the replayer of every other process's leftovers.

    `columns` names the values of the row arrays given to `commit()` (the ledger's column order).
    """

    def __init__(self, directory: Path, columns: Sequence[str] = (), *,
                 max_segment_bytes: int = MAX_SEGMENT_BYTES) -> None:
        self.directory = Path(directory)
        self._base = f"{_safe_host()}-{os.getpid()}-{int(time.time() * 1000)}"
        self._seq = 0
        self._header = orjson.dumps({HEADER_KEY: list(columns)}, option=orjson.OPT_APPEND_NEWLINE)
        self._max_segment = max_segment_bytes
        # Guards the segment lists, their counts and every write: commits and settlements run on the
        # loop thread, fsyncs on the sync thread, appends in worker threads and on the loop thread.
        self._lock = threading.Lock()
        self._current: _Held | None = None  # where group commits go
        self._spill: _Held | None = None  # where appends go: lines held nowhere else, for a replay
        # Own segments retired while some of their rows were still on their way to the ledger.
        self._draining: list[_Held] = []
        # Own segments with abandoned lines, out of service, waiting for a replay: still locked by us.
        self._sealed: list[_Held] = []
        # Segments written to since the last `sync_written()`.
        self._unsynced: list[_Held] = []
        # Held while an own file is fsync'd by descriptor, and taken before one is closed, so an
        # fsync never lands on a closed (or reused) descriptor.
        self._fsync_lock = threading.Lock()
        self._write_failed = False
        self._dir_ready = False
        self._dir_synced = True

    # -- paths -------------------------------------------------------------------------------------

    def _ensure_dir(self) -> None:
        if self._dir_ready:
            return
        if not self.directory.exists():
            # Envelopes may hold prompts and answers: only the gateway's user may read them.
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.directory, 0o700)
        self._dir_ready = True

    def _own(self) -> list[_Held]:
        return [*self._sealed, *self._draining, *(h for h in (self._spill, self._current) if h is not None)]

    def own_paths(self) -> list[Path]:
        with self._lock:
            return [h.path for h in self._own()]

    @property
    def pending(self) -> bool:
        """True when this process has abandoned journal lines not yet replayed."""
        cur = self._current
        return bool(self._sealed) or self._spill is not None or (cur is not None and cur.abandoned)

    def disk_bytes(self) -> int:
        """Bytes in this process's journal files."""
        with self._lock:
            return sum(h.size for h in self._own())

    # -- writing -----------------------------------------------------------------------------------

    def _open_new(self) -> _Held:
        self._ensure_dir()
        while True:
            self._seq += 1
            path = self.directory / f"{self._base}-{self._seq:04d}{SUFFIX}"
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_APPEND | os.O_CLOEXEC, 0o600)
            except FileExistsError:  # a journal of this process made in the same millisecond has it
                continue
            f = os.fdopen(fd, "a+b")
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                # Another process's replay may have locked the fresh empty file first and deleted it
                # (it looks like a dead process's). Then this inode is gone: lines written to it
                # would be lost, so start over with the next name.
                if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                    self._dir_synced = False
                    return _Held(path, f)
            except OSError:
                pass
            f.close()

    def _segment_locked(self) -> _Held:
        """The segment for a commit (with self._lock held): the current one, or a fresh one when it
        grew past the size bound (the old one is deleted once all its rows are in the ledger)."""
        cur = self._current
        if cur is not None and cur.size >= self._max_segment:
            self._current = None
            (self._sealed if cur.abandoned else self._draining).append(cur)
            cur = None
        if cur is None:
            cur = self._current = self._open_new()
        return cur

    def _spill_locked(self) -> _Held:
        """The segment for an append (with self._lock held)."""
        if self._spill is None:
            self._spill = self._open_new()
            self._spill.abandoned = True
        return self._spill

    def _write_locked(self, cur: _Held, data: bytes, count: int) -> None:
        # Called with self._lock held.
        if self._write_failed:
            # The last write may have left half a line: end it so it spoils only itself.
            data = b"\n" + data
        try:
            cur.file.write(data)
            cur.file.flush()
        except OSError:
            self._write_failed = True
            raise
        self._write_failed = False
        cur.rows += count
        cur.size += len(data)

    def write(self, rows: Sequence[str]) -> Segment:
        """Append row arrays (`row_json` texts) in one write, to be fsync'd by `sync_written()`: the
        group commit. Returns their segment. Raises OSError if the disk refuses."""
        body = ("\n".join(rows) + "\n").encode()
        with self._lock:
            cur = self._segment_locked()
            self._write_locked(cur, body if cur.header else self._header + body, len(rows))
            cur.header = True
            if not self._unsynced or self._unsynced[-1] is not cur:
                self._unsynced.append(cur)
        return cur

    def commit(self, rows: Sequence[str]) -> Segment:
        """`write(rows)`, then fsync it (blocking)."""
        segment = self.write(rows)
        self.sync_written()
        return segment

    def sync_written(self) -> None:
        """fsync every segment written to since the last call (and the directory for a new file).
        Blocking: the sync thread's. Raises OSError (the segments are then kept for the next call)."""
        with self._lock:
            todo, self._unsynced = self._unsynced, []
            sync_dir = not self._dir_synced
            self._dir_synced = True
        try:
            with self._fsync_lock:
                for h in todo:
                    if not h.gone:
                        os.fsync(h.file.fileno())
            if sync_dir:
                self._fsync_dir()
        except OSError:
            with self._lock:
                self._unsynced[:0] = todo
                self._dir_synced = self._dir_synced and not sync_dir
            raise

    def _append_sync(self, lines: bytes, count: int) -> None:
        with self._lock:
            cur = self._spill_locked()
            self._write_locked(cur, lines, count)
            fd, sync_dir = self._dup_for_sync(cur.file)
        self._fsync_dup(fd, sync_dir)

    def _dup_for_sync(self, file: Any) -> tuple[int, bool]:
        """Under the lock: a duplicate descriptor to fsync once the lock is released, so an overflow
        append on the loop thread never waits for a disk flush, and a rotation closing the original
        descriptor meanwhile cannot pull it from under us."""
        fd = os.dup(file.fileno())
        sync_dir = not self._dir_synced
        self._dir_synced = True
        return fd, sync_dir

    def _fsync_dup(self, fd: int, sync_dir: bool) -> None:
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if sync_dir:
            self._fsync_dir()

    def _fsync_dir(self) -> None:
        # A new file's name is durable only once its directory is.
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    async def append(self, envelopes: Sequence[dict[str, Any]]) -> None:
        """Append envelopes and fsync them (in a worker thread); they wait for a replay. Raises OSError."""
        if not envelopes:
            return
        data = b"".join(encode(e) for e in envelopes)
        await asyncio.to_thread(self._append_sync, data, len(envelopes))

    def append_nowait(self, envelope: dict[str, Any]) -> None:
        """Append one envelope on the calling thread: a buffered write, no fsync; it waits for a
        replay. Raises OSError."""
        data = encode(envelope)
        with self._lock:
            self._write_locked(self._spill_locked(), data, 1)

    def _sync_spill(self) -> None:
        with self._lock:
            cur = self._spill
            if cur is None:
                return
            fd, sync_dir = self._dup_for_sync(cur.file)
        self._fsync_dup(fd, sync_dir)

    async def sync(self) -> None:
        """fsync what `append_nowait()` wrote."""
        await asyncio.to_thread(self._sync_spill)

    # -- what became of committed rows ---------------------------------------------------------------

    def settle(self, segment: Segment, count: int) -> list[Segment]:
        """`count` rows of `segment` are in the ledger (or set aside). Returns the segment when that
        was the last of its rows, taken out of service, for `delete()` (off the event loop: unlinking
        a large file takes time); the next commit starts a new one."""
        with self._lock:
            segment.inserted += count
            if segment.abandoned or segment.inserted < segment.rows:
                return []
            if segment is self._current:
                self._current = None
            elif segment in self._draining:
                self._draining.remove(segment)
            else:
                return []
            segment.gone = True
            return [segment]

    def abandon(self, segment: Segment) -> None:
        """Some rows of `segment` are held nowhere else now: keep it until a replay has them in."""
        with self._lock:
            if segment.gone:  # replayed meanwhile: its rows are in the ledger
                return
            segment.abandoned = True
            if segment in self._draining:
                self._draining.remove(segment)
                self._sealed.append(segment)

    def delete(self, segments: Iterable[Segment]) -> None:
        for h in segments:
            self._finish_file(h)

    def close(self) -> None:
        """Release this process's files: those whose rows are all in the ledger are deleted, the rest
        fsync'd and left for a later replay."""
        with self._lock:
            held = self._own()
            self._sealed, self._draining, self._current, self._spill = [], [], None, None
        for h in held:
            try:
                if not h.abandoned and h.inserted >= h.rows:
                    h.path.unlink(missing_ok=True)
                else:
                    os.fsync(h.file.fileno())
            except OSError as e:
                log.warning("journal %s: closing: %s", h.path.name, e)
            finally:
                with self._fsync_lock:
                    h.gone = True
                    h.file.close()  # releases the lock

    # -- replay ------------------------------------------------------------------------------------

    def _seal_current(self) -> None:
        with self._lock:
            cur = self._current
            if cur is not None and cur.abandoned:
                self._current = None
                self._sealed.append(cur)
            if self._spill is not None:
                self._sealed.append(self._spill)
                self._spill = None

    def _take_foreign(self) -> list[_Held]:
        """Lock every other *.jsonl file that no live process holds."""
        if not self.directory.is_dir():
            return []
        own = set(self.own_paths())
        taken: list[_Held] = []
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            if path in own:
                continue
            try:
                f = open(path, "rb")  # kept open (and locked) until replayed
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                # Between our open and our lock another replayer may have finished and deleted it.
                if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                    taken.append(_Held(path, f))
                    continue
            except OSError:  # BlockingIOError: a live process owns it; FileNotFoundError: just replayed
                pass
            f.close()
        return taken

    async def replay(self, insert: ReplayInsert, *, batch_size: int = 256, own_only: bool = False) -> ReplayResult:
        """Replay this process's abandoned lines, then (unless own_only) every unlocked file left by
        others. Stops at the first failing insert and re-raises it; what is not replayed stays on disk.
        """
        self._seal_current()
        total = files = skipped = 0
        while self._sealed:
            held = self._sealed[0]
            n, s = await self._replay_file(held, insert, batch_size)
            total, skipped, files = total + n, skipped + s, files + 1
            with self._lock:
                self._sealed.remove(held)
        if own_only:
            return ReplayResult(total, files, skipped)
        foreign = await asyncio.to_thread(self._take_foreign)
        try:
            while foreign:
                held = foreign[0]
                n, s = await self._replay_file(held, insert, batch_size)
                total, skipped, files = total + n, skipped + s, files + 1
                foreign.pop(0)
        finally:
            for h in foreign:  # not reached because an insert failed: unlock for the next replay
                h.file.close()
        if total or skipped:
            log.info("journal replayed %d envelopes from %d files (%d unreadable lines)", total, files, skipped)
        return ReplayResult(total, files, skipped)

    async def _replay_file(self, held: _Held, insert: ReplayInsert, batch_size: int) -> tuple[int, int]:
        await asyncio.to_thread(held.file.seek, 0)
        reader = _LineReader(held, self._reject)
        replayed = 0
        while True:
            batch = await asyncio.to_thread(reader.read, batch_size)
            if not batch:
                break
            await insert(batch)
            replayed += len(batch)
        await asyncio.to_thread(self._finish_file, held)
        return replayed, reader.skipped

    def _finish_file(self, held: _Held) -> None:
        # Unlink before unlocking: once the lock is gone nobody must find the file again.
        with self._fsync_lock:
            held.gone = True
            held.path.unlink(missing_ok=True)
            held.file.close()

    def _reject(self, raw: bytes, source: str, reason: str) -> None:
        """Keep what cannot be replayed in <name>.rejected, for an operator; never deleted here."""
        self.reject([{"reason": reason, "source": source, "raw": raw.decode("utf-8", "replace")}])

    def reject(self, items: Iterable[dict[str, Any]]) -> None:
        """Append dead-letter records (sync; rare). Errors are logged: there is nowhere further to go."""
        data = b"".join(encode(i) for i in items)
        if not data:
            return
        try:
            self._ensure_dir()
            path = self.directory / f"{self._base}{REJECTED_SUFFIX}"
            fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            log.error("journal: cannot keep %d rejected envelope bytes: %s", len(data), e)


class _LineReader:
    """Reads a journal file in batches of parsed lines, setting aside the unparseable ones."""

    def __init__(self, held: _Held, reject: Callable[[bytes, str, str], None]) -> None:
        self._held = held
        self._reject = reject
        self.skipped = 0
        self._lineno = 0
        self._columns: list[str] | None = None

    def _parse(self, line: bytes) -> dict[str, Any] | None:
        """The envelope on a line: an object, or a row array named by the file's last header line
        (itself None). Raises ValueError."""
        obj = orjson.loads(line)
        if isinstance(obj, list):
            if self._columns is None:
                raise ValueError("a row before any column header")
            if len(obj) != len(self._columns):
                raise ValueError(f"{len(obj)} values for {len(self._columns)} columns")
            return dict(zip(self._columns, obj, strict=True))
        if not isinstance(obj, dict):
            raise ValueError("not an object")
        columns = obj.get(HEADER_KEY)
        if columns is not None and len(obj) == 1:
            if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
                raise ValueError("a column header without column names")
            self._columns = columns
            return None
        return obj

    def read(self, n: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        f = self._held.file
        while len(out) < n:
            raw = f.readline()
            if not raw:
                break
            self._lineno += 1
            torn = not raw.endswith(b"\n")
            line = raw.strip()
            if not line:
                continue
            try:
                obj = self._parse(line)
                if obj is None:
                    continue
            except ValueError as e:
                self.skipped += 1
                what = "torn last line (a crash mid-write)" if torn else f"unreadable line ({e})"
                log.warning("journal %s:%d: %s, skipped", self._held.path.name, self._lineno, what)
                self._reject(raw, f"{self._held.path.name}:{self._lineno}", what)
                continue
            out.append(obj)
        return out
