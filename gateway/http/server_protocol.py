"""uvicorn's httptools protocol, with a response's head and the first part of its body in one write.

uvicorn writes the status line and headers when the app sends `http.response.start`, and the body
on `http.response.body`: two send() calls, two TCP segments for the client to take in, for every
answer. Here the head waits until the body's first write joins it (the same task step, for every
answer the gateway gives), or until the end of the loop's current iteration if no body follows at
once. Writes are never reordered, only joined; nothing but the head is ever held back.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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


class HeadJoiningHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_HeadJoiningTransport(transport, self.loop))  # type: ignore[arg-type]
