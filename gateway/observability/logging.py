"""JSON logs through a bounded queue, written by a background thread.

The event loop only puts a record on a queue; formatting and the write happen on the listener
thread. When the queue is full the record is dropped and counted rather than blocking a request.
Records carry structured fields in `extra={"fields": {...}}`; nothing here ever adds a secret,
and callers must not pass one.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import time
from typing import Any, TextIO

import orjson


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
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


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """A QueueHandler that never blocks: past the bound a record is counted and dropped."""

    def __init__(self, q: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(q)
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The listener thread formats; skip QueueHandler's eager formatting on the event loop.
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class LogPipeline:
    """Owns the queue, its handler and the listener thread."""

    def __init__(self, level: str = "info", queue_size: int = 10_000, stream: TextIO | None = None) -> None:
        self.queue: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=queue_size)
        self.handler = DroppingQueueHandler(self.queue)
        out = logging.StreamHandler(stream or sys.stdout)
        out.setFormatter(JsonFormatter())
        self.listener = logging.handlers.QueueListener(self.queue, out, respect_handler_level=False)
        self.level = getattr(logging, level.upper())

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
        self.listener.start()

    def stop(self) -> None:
        self.listener.stop()  # drains what is queued


def access_logger() -> logging.Logger:
    return logging.getLogger("gateway.access")
