"""uvicorn's httptools protocol, with a response's head checked in one pass and sent with its body.

uvicorn writes the status line and headers when the app sends `http.response.start`, and the body
on `http.response.body`: two send() calls, two TCP segments for the client to take in, for every
answer. Here the head waits until the body's first write joins it (the same task step, for every
answer the gateway gives), or until the end of the loop's current iteration if no body follows at
once. Writes are never reordered, only joined; nothing but the head is ever held back.

uvicorn also checks each response header with two regular expressions and lower-cases its name:
~3,000 instructions per header, a dozen headers per answer. `_LeanCycle` checks all names and all
values in one table lookup per byte instead, for a head of lower-case names it can write as it is;
any other head (upper-case names, a `connection` or `transfer-encoding` header, a bad byte) goes
to uvicorn's own code unchanged, which also raises its errors.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

_HEAD_START = b"HTTP/"


class _HeadJoiningTransport:
    """The connection's transport as uvicorn sees it: a response head is held for its body."""

    __slots__ = ("_flush_scheduled", "_head", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head = b""
        self._flush_scheduled = False

    def write(self, data: bytes) -> None:
        if self._head:
            data, self._head = self._head + data, b""
            self._transport.write(data)
        elif data.startswith(_HEAD_START):
            self._head = data
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._head:
            data, self._head = self._head, b""
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


# What a head may hold without uvicorn's look at it: lower-case token characters in names (RFC 9110),
# and in values anything but the control characters uvicorn refuses (it allows tab and bytes >= 0x80).
_NAME_BYTES = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
_VALUE_BYTES = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])
# Header names already found good: the gateway sends the same few dozen, and a set lookup costs less
# than looking at their bytes again. Bounded, and only ever holds names that passed the check.
_checked_names: set[bytes] = set()
_MAX_CHECKED_NAMES = 512


class _LeanCycle(RequestResponseCycle):
    """uvicorn's request/response cycle; only the response head of the common case is made here."""

    async def send(self, message: ASGISendEvent) -> None:
        if (message["type"] == "http.response.start" and not self.response_started and self.keep_alive
                and not self.access_log and not self.disconnected and not self.flow.write_paused):
            head = self._head(message["status"], [*self.default_headers, *message.get("headers", ())])
            if head is not None:
                self.response_started = True
                self.waiting_for_100_continue = False
                self.transport.write(head)
                return
        await super().send(message)

    def _head(self, status: int, headers: list[tuple[bytes, bytes]]) -> bytes | None:
        """What uvicorn would write for this head (and its state set as uvicorn sets it), or None to let it."""
        if not headers:
            return None
        # Every step is one C call over all headers: no Python bytecode runs per header.
        names, values = zip(*headers, strict=True)
        if not _checked_names.issuperset(names):
            if b"".join(names).translate(None, _NAME_BYTES):
                return None
            if len(_checked_names) < _MAX_CHECKED_NAMES:
                _checked_names.update(names)
        if (b"".join(values).translate(None, _VALUE_BYTES) or b"transfer-encoding" in names
                or b"connection" in names):
            return None
        lines = b"\r\n".join(map(b": ".join, headers))
        if b"content-length" in names:
            length = values[names.index(b"content-length")]  # the first one, as uvicorn
            if not length.isdigit():
                return None  # uvicorn's int() raises on it
            self.expected_content_length = int(length)
            self.chunked_encoding = False
        elif self.scope["method"] != "HEAD" and status not in (204, 304):
            self.chunked_encoding = True
            return STATUS_LINE[status] + lines + b"\r\ntransfer-encoding: chunked\r\n\r\n"
        return STATUS_LINE[status] + lines + b"\r\n\r\n"


class HeadJoiningHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_HeadJoiningTransport(transport, self.loop))  # type: ignore[arg-type]

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        # The cycle was just made and its task not yet run: it becomes the lean kind before its first send.
        if type(self.cycle) is RequestResponseCycle:
            self.cycle.__class__ = _LeanCycle
