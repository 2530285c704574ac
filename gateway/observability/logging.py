"""JSON logs through a bounded queue, written by a background thread in batches.

The event loop only appends an item to a bounded buffer; formatting and the write happen on the
writer thread, which drains what is buffered and writes it with one `write()`. When the buffer is
full the item is dropped and counted rather than blocking a request. Records carry structured fields
in `extra={"fields": {...}}`; nothing here ever adds a secret, and callers must not pass one.

The access log (one line per request) skips the `logging` machinery on the event loop: building
a LogRecord and finding its caller costs more than the rest of the line; it queues the fields.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
import time
from typing import Any, TextIO

import orjson

# Lines formatted per write: the writer holds the GIL while formatting, and the event loop waits.
_BATCH = 64
_POLL_S = 0.02  # how often an idle writer looks for lines
ACCESS_LOGGER = "gateway.access"


# A line longer than this is written again with every string in it cut to _FIELD_CHARS (a traceback to
# _EXC_CHARS). Callers bound what a client or a provider chose; this is the net under them, and costs
# one length check per line, on the writer thread.
MAX_LINE_BYTES = 16_384
_FIELD_CHARS = 1024
_EXC_CHARS = 8192


def _bounded(value: Any, limit: int = _FIELD_CHARS) -> Any:
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "...[truncated]"
    if isinstance(value, dict):
        return {str(k)[:limit]: _bounded(v, _EXC_CHARS if k == "exc" else limit) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_bounded(v, limit) for v in value[:64]]
    return value


# The last whole second formatted, per thread: every line of a second shares it.
_seconds = threading.local()


def _timestamp(created: float) -> str:
    second = int(created // 1)
    memo = getattr(_seconds, "memo", None)
    if memo is None or memo[0] != second:
        memo = _seconds.memo = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{memo[1]}.{int(created * 1000) % 1000:03d}Z"


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
        line = orjson.dumps(out, default=str)
        if len(line) > MAX_LINE_BYTES:
            line = orjson.dumps(_bounded(out), default=str)
        return line.decode()


def _access_line(created: float, fields: dict[str, Any]) -> bytes:
    # The fixed keys are put in front of the fields' own JSON: no merged dict per line.
    head = b'{"ts":"%s","level":"info","logger":"%s","msg":"request"' % (_timestamp(created).encode(),
                                                                         ACCESS_LOGGER.encode())
    body = orjson.dumps(fields, default=str)
    if len(body) > MAX_LINE_BYTES:
        body = orjson.dumps(_bounded(fields), default=str)
    return head + b"}" if body == b"{}" else head + b"," + body[1:]


class _PipelineHandler(logging.Handler):
    """Hands records to the pipeline unformatted; the writer thread formats them."""

    def __init__(self, pipeline: LogPipeline) -> None:
        super().__init__()
        self.pipeline = pipeline

    def emit(self, record: logging.LogRecord) -> None:
        self.pipeline.enqueue(record)


class LogPipeline:
    """Owns the bounded buffer, its handler and the writer thread.

    The buffer is a deque the writer polls every few milliseconds: appending costs the event loop
    tens of nanoseconds and no system call, where a Queue would wake the thread on every line.
    """

    def __init__(self, level: str = "info", queue_size: int = 10_000, stream: TextIO | None = None) -> None:
        self.max_items = queue_size
        self.items: collections.deque[Any] = collections.deque()
        self.dropped = 0
        self.handler = _PipelineHandler(self)
        self.stream = stream or sys.stdout
        self.formatter = JsonFormatter()
        self.level = getattr(logging, level.upper())
        self._stopping = threading.Event()
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

    def enqueue(self, item: Any) -> None:
        """Never blocks: past the bound an item is counted and dropped."""
        if len(self.items) >= self.max_items:
            self.dropped += 1
        else:
            self.items.append(item)

    def access(self, fields: dict[str, Any]) -> None:
        self.enqueue((time.time(), fields))

    def stop(self) -> None:
        """Write what is buffered, then end the writer thread."""
        if self._thread is None:
            return
        self._stopping.set()
        self._thread.join(timeout=10)
        self._thread = None

    def _write_loop(self) -> None:
        items = self.items
        while True:
            if not items:
                if self._stopping.is_set():
                    return
                self._stopping.wait(_POLL_S)
                continue
            lines: list[bytes] = []
            while items and len(lines) < _BATCH:
                lines.append(self._format(items.popleft()))
            lines.append(b"")
            self._write(b"\n".join(lines))

    def _format(self, item: Any) -> bytes:
        try:
            if isinstance(item, tuple):
                return _access_line(*item)
            return self.formatter.format(item).encode()
        except Exception as e:  # a record that cannot be formatted must not end the writer
            return orjson.dumps({"level": "error", "logger": "gateway.logging",
                                 "msg": f"unformattable log record: {type(e).__name__}"})

    def _write(self, data: bytes) -> None:
        try:
            # The lines are UTF-8 JSON already: straight to the binary stream under a text one (stdout),
            # not decoded here to be encoded again there.
            binary = getattr(self.stream, "buffer", None)
            if binary is not None:
                self.stream.flush()
                binary.write(data)
                binary.flush()
            else:
                self.stream.write(data.decode())
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
