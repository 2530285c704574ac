"""Responses that misbehave at the connection level: hangs, resets and cut streams.

ASGI has no "drop the connection" message, and an exception before the response starts makes
uvicorn answer a clean 500, which is not what a reset looks like to a client. uvicorn's
`receive` is a bound method of its per-request cycle, which holds the asyncio transport; with it
a reset is a real TCP RST (SO_LINGER 0 + abort) and a cut stream is a FIN in the middle of a
chunked body. Under a server without that attribute the fallbacks are an error the server turns
into a 500 (reset) or a closed connection (cut, the exception comes after the response started).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

HANG_S = 3600.0


class ConnectionFault(RuntimeError):
    """Raised when the server gives no handle on the connection (not under uvicorn)."""


def _transport(receive: Receive) -> Any:
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    return transport if hasattr(transport, "abort") else None


async def wait_disconnect(receive: Receive, within_s: float) -> bool:
    """Wait until the client goes away (True) or `within_s` passes (False)."""
    try:
        async with asyncio.timeout(within_s):
            while (await receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        return False
    return True


async def _close(receive: Receive, *, reset: bool) -> None:
    transport = _transport(receive)
    if transport is None:
        raise ConnectionFault("the server does not expose its transport; cannot drop the connection")
    if reset:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()
    # Let uvicorn see the disconnect before we return, or it logs "returned without a response".
    await wait_disconnect(receive, 1.0)


async def hang(receive: Receive, closing: asyncio.Event) -> bool:
    """Hold a request until the client gives up (True) or HANG_S passes (False).

    When the server shuts down (`closing` is set) the connection is reset: a provider that goes
    away drops its connections, and a hang must not hold the process up.
    """
    gone = asyncio.ensure_future(wait_disconnect(receive, HANG_S))
    stop = asyncio.ensure_future(closing.wait())
    try:
        await asyncio.wait({gone, stop}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        # Cancelled by a server that gave no warning: drop the connection rather than let the
        # server answer the hung request with a 500.
        transport = _transport(receive)
        if transport is not None:
            transport.abort()
        raise
    finally:
        gone.cancel()
        stop.cancel()
    if gone.done() and not gone.cancelled():
        return gone.result()
    await _close(receive, reset=True)
    return True


class ResetResponse(Response):
    """Closes the connection with a TCP reset and sends nothing at all."""

    def __init__(self) -> None:
        self.status_code, self.background, self.raw_headers = 0, None, []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _close(receive, reset=True)


class GoneResponse(Response):
    """For a client that already hung up: there is no one to send anything to."""

    def __init__(self) -> None:
        self.status_code, self.background, self.raw_headers = 0, None, []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        return None


class EventStreamResponse(Response):
    """A server-sent event stream of pre-encoded events, optionally paced or cut.

    Without pacing or a cut the events go out in one write: the mock is a load-test upstream
    and one write per event would cost far more than the answer itself.
    """

    media_type = "text/event-stream"

    def __init__(self, events: list[bytes], tail: bytes, *, cut_after: int | None = None,
                 delay_s: float = 0.0, headers: dict[str, str] | None = None) -> None:
        # Not Response.__init__: it would add `content-length: 0` for the empty initial body.
        self.status_code, self.background = 200, None
        self.raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
        self.raw_headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
        self.events, self.tail, self.cut_after, self.delay_s = events, tail, cut_after, delay_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        if self.cut_after is None and not self.delay_s:
            await send({"type": "http.response.body", "body": b"".join(self.events) + self.tail})
            return
        transport = _transport(receive)
        for i, event in enumerate(self.events):
            if self.cut_after is not None and i >= self.cut_after:
                break
            if self.delay_s and i:
                await asyncio.sleep(self.delay_s)
                if transport is not None and transport.is_closing():
                    return  # the client left; uvicorn would drop the rest silently anyway
            await send({"type": "http.response.body", "body": event, "more_body": True})
        if self.cut_after is not None:
            await _close(receive, reset=False)
            return
        await send({"type": "http.response.body", "body": self.tail})
