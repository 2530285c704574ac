"""JSON logs through a bounded queue, written by a background thread in batches.

The event loop only puts an item on a queue; formatting and the write happen on the writer
thread, which drains whatever is queued and writes it with one `write()`. When the queue is full
the item is dropped and counted rather than blocking a request. Records carry structured fields
in `extra={"fields": {...}}`; nothing here ever adds a secret, and callers must not pass one.

The access log (one line per request) skips the `logging` machinery on the event loop: building
a LogRecord and finding its caller costs more than the rest of the line; it queues the fields.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import threading
import time
from typing import Any, TextIO

import orjson

# Lines formatted per write: the writer holds the GIL while formatting, and the event loop waits.
_BATCH = 64
_STOP = object()
ACCESS_LOGGER = "gateway.access"


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created * 1000) % 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def _access_line(created: float, fields: dict[str, Any]) -> str:
    out = {"ts": _timestamp(created), "level": "info", "logger": ACCESS_LOGGER, "msg": "request", **fields}
    return orjson.dumps(out, default=str).decode()


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """A QueueHandler that never blocks: past the bound a record is counted and dropped."""

    def __init__(self, q: queue.Queue[Any]) -> None:
        super().__init__(q)
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The writer thread formats; skip QueueHandler's eager formatting on the event loop.
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class LogPipeline:
    """Owns the queue, its handler and the writer thread."""

    def __init__(self, level: str = "info", queue_size: int = 10_000, stream: TextIO | None = None) -> None:
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self.handler = DroppingQueueHandler(self.queue)
        self.stream = stream or sys.stdout
        self.formatter = JsonFormatter()
        self.level = getattr(logging, level.upper())
        self._thread: threading.Thread | None = None

    def install(self) -> None:
        root = logging.getLogger()
        for h in list(root.handlers):
            root.removeHandler(h)
        root.addHandler(self.handler)
        root.setLevel(self.level)
        # uvicorn's own access log would duplicate the gateway's request line.
        logging.getLogger("uvicorn.access").disabled = True
        for name in ("uvicorn", "uvicorn.error"):
            lg = logging.getLogger(name)
            lg.handlers.clear()
            lg.propagate = True
        self._thread = threading.Thread(target=self._write_loop, name="gateway-log-writer", daemon=True)
        self._thread.start()

    def access(self, fields: dict[str, Any]) -> None:
        """Queue one access line; never blocks."""
        try:
            self.queue.put_nowait((time.time(), fields))
        except queue.Full:
            self.handler.dropped += 1

    def stop(self) -> None:
        """Write what is queued, then end the writer thread."""
        if self._thread is None:
            return
        self.queue.put(_STOP)  # blocking: the writer is draining, so there will be room
        self._thread.join(timeout=10)
        self._thread = None

    def _write_loop(self) -> None:
        q = self.queue
        while True:
            batch = [q.get()]
            while len(batch) < _BATCH:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            lines = []
            stop = False
            for item in batch:
                if item is _STOP:
                    stop = True
                else:
                    lines.append(self._format(item))
            if lines:
                self._write("\n".join(lines) + "\n")
            if stop:
                return

    def _format(self, item: Any) -> str:
        try:
            if isinstance(item, tuple):
                return _access_line(*item)
            return self.formatter.format(item)
        except Exception as e:  # a record that cannot be formatted must not end the writer
            return orjson.dumps({"level": "error", "logger": "gateway.logging",
                                 "msg": f"unformattable log record: {type(e).__name__}"}).decode()

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stdout gone (closed pipe): nothing to report to


class AccessLog:
    """The per-request line: onto the pipeline's queue when there is one, else through `logging`."""

    def __init__(self) -> None:
        self._pipeline: LogPipeline | None = None
        self._logger = logging.getLogger(ACCESS_LOGGER)

    def attach(self, pipeline: LogPipeline) -> None:
        self._pipeline = pipeline if pipeline.level <= logging.INFO else None

    def write(self, fields: dict[str, Any]) -> None:
        if self._pipeline is not None:
            self._pipeline.access(fields)
        elif self._logger.isEnabledFor(logging.INFO):
            self._logger.info("request", extra={"fields": fields})
