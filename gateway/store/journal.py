"""The local append-only journal: where envelopes wait while the ledger cannot take them.

JSON lines, one envelope per line, in one file per process (`<host>-<pid>-<start ms>-<seq>.jsonl`)
inside a 0700 directory. The owning process holds an exclusive `flock` on its file for as long as
the file exists, so a replay (by any process) takes exactly the files whose owner is gone or
done: a live process's file cannot be locked, a dead process's lock died with it.

Two ways in:
- `append()`: a batch, written and fsync'd in a worker thread; the writer's degraded path.
- `append_nowait()`: one envelope, a buffered write handed to the OS on the calling thread with no
  fsync; the hot path's overflow when the writer's queue is full. `sync()` makes those durable.

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


@dataclass(slots=True)
class _Held:
    """An own journal file: open for appending and reading, exclusively locked."""

    path: Path
    file: IO[bytes]
    lines: int = 0


@dataclass(frozen=True, slots=True)
class ReplayResult:
    envelopes: int  # lines handed to the insert callback
    files: int  # files fully replayed and deleted
    skipped_lines: int  # unparseable lines (kept in a .rejected file)


class Journal:
    """One process's journal in `directory`; also the replayer of every other process's leftovers."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._base = f"{_safe_host()}-{os.getpid()}-{int(time.time() * 1000)}"
        self._seq = 0
        # Guards _current and writes to it: appends run in worker threads and on the loop thread.
        self._lock = threading.Lock()
        self._current: _Held | None = None
        # Own files taken out of service for replay but not yet fully replayed: still locked by us.
        self._sealed: list[_Held] = []
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

    def own_paths(self) -> list[Path]:
        held = [h.path for h in self._sealed]
        cur = self._current
        return [*held, cur.path] if cur is not None else held

    @property
    def pending(self) -> bool:
        """True when this process has journal lines not yet replayed."""
        cur = self._current
        return bool(self._sealed) or (cur is not None and cur.lines > 0)

    # -- writing -----------------------------------------------------------------------------------

    def _open_new(self) -> _Held:
        self._ensure_dir()
        while True:
            self._seq += 1
            path = self.directory / f"{self._base}-{self._seq:04d}{SUFFIX}"
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_APPEND | os.O_CLOEXEC, 0o600)
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

    def _write_locked(self, data: bytes, count: int) -> _Held:
        # Called with self._lock held.
        cur = self._current
        if cur is None:
            cur = self._current = self._open_new()
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
        cur.lines += count
        return cur

    def _append_sync(self, lines: bytes, count: int) -> None:
        with self._lock:
            held = self._write_locked(lines, count)
            fd, sync_dir = self._dup_for_sync(held.file)
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
        """Append a batch and fsync it (in a worker thread). Raises OSError if the disk refuses."""
        if not envelopes:
            return
        data = b"".join(encode(e) for e in envelopes)
        await asyncio.to_thread(self._append_sync, data, len(envelopes))

    def append_nowait(self, envelope: dict[str, Any]) -> None:
        """Append one envelope on the calling thread: a buffered write, no fsync. Raises OSError."""
        data = encode(envelope)
        with self._lock:
            self._write_locked(data, 1)

    def _sync_current(self) -> None:
        with self._lock:
            cur = self._current
            if cur is None:
                return
            fd, sync_dir = self._dup_for_sync(cur.file)
        self._fsync_dup(fd, sync_dir)

    async def sync(self) -> None:
        """fsync what `append_nowait()` wrote."""
        await asyncio.to_thread(self._sync_current)

    def close(self) -> None:
        """Release this process's files (fsync'd), leaving any unreplayed lines for a later replay."""
        with self._lock:
            held = [*self._sealed, *([self._current] if self._current is not None else [])]
            self._sealed, self._current = [], None
        for h in held:
            try:
                if h.lines == 0 and h.file.seek(0, os.SEEK_END) == 0:
                    h.path.unlink(missing_ok=True)
                else:
                    os.fsync(h.file.fileno())
            except OSError as e:
                log.warning("journal %s: closing: %s", h.path.name, e)
            finally:
                h.file.close()  # releases the lock

    # -- replay ------------------------------------------------------------------------------------

    def _seal_current(self) -> None:
        with self._lock:
            cur = self._current
            if cur is not None and cur.lines > 0:
                self._current = None
                self._sealed.append(cur)

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
        """Replay this process's lines, then (unless own_only) every unlocked file left by others.

        Stops at the first failing insert and re-raises it; what is not replayed stays on disk.
        """
        self._seal_current()
        total = files = skipped = 0
        while self._sealed:
            held = self._sealed[0]
            n, s = await self._replay_file(held, insert, batch_size)
            total, skipped, files = total + n, skipped + s, files + 1
            self._sealed.pop(0)
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
                obj = orjson.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("not an object")
            except ValueError as e:
                self.skipped += 1
                what = "torn last line (a crash mid-write)" if torn else f"unreadable line ({e})"
                log.warning("journal %s:%d: %s, skipped", self._held.path.name, self._lineno, what)
                self._reject(raw, f"{self._held.path.name}:{self._lineno}", what)
                continue
            out.append(obj)
        return out
