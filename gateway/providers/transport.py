"""HTTP/1.1 to one provider origin: pooled keep-alive connections parsed by httptools.

Why not aiohttp's client: measured on this kind of machine, its request path costs ~130 us of CPU
per call (URL and header objects, payload registry, cookie jar, tracing hooks, timer handles), more
than everything else a gateway request does put together; this one costs ~30 us. It does only what
calling an API needs: one origin per provider, `content-length` request bodies written in one
`write()`, responses framed by httptools (the parser uvicorn uses; chunked and content-length),
keep-alive reuse, at most `max_connections` open, TLS by the standard library. No redirects, no
cookies, no proxies, no compression offered.

A pooled connection that the server closed while idle and that fails before a single response
byte is retried once on a new connection: the server never read that request.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools

from gateway.deadlines import Deadlines

MAX_BODY_BYTES = 64 * 1024 * 1024  # a provider answer larger than this is refused, not buffered
_STREAM_HIGH_WATER = 256 * 1024  # stop reading from the socket while this much waits for the consumer
_KEEPALIVE_S = 30.0  # idle connections older than this are closed rather than reused


class TransportError(Exception):
    """The provider could not be reached, or broke the connection or the protocol."""


class ConnectFailed(TransportError):
    pass


class ConnectionLost(TransportError):
    pass


class ProtocolViolation(TransportError):
    pass


class DeadlinePassed(TransportError, TimeoutError):
    """The request's deadline passed before its answer was complete."""


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the response being read on it."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.deadlines: Deadlines | None = None
        self.timer: int | None = None  # the armed deadline's token
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0  # waiting for the consumer
        self.total = 0  # body bytes of this response so far
        self.head_done = False
        self.interim = False
        self.keep_alive = False
        self.complete = False
        self.received_any = False
        self.error: TransportError | None = None
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(ProtocolViolation(f"malformed HTTP response ({e})"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.head_done and not self.complete and self._delimited_by_close():
            self.complete = True  # a body without length or chunking ends when the connection does
        if not self.complete and self.error is None:
            self.error = ConnectionLost("the connection closed before the response was complete")
        self._wake()

    def _delimited_by_close(self) -> bool:
        for name, value in self.raw_headers:
            lowered = name.lower()
            if lowered == b"content-length" or (lowered == b"transfer-encoding" and b"chunked" in value.lower()):
                return False
        return True

    # -- httptools callbacks ----------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows on this connection.
            self.raw_headers = []
            self.interim = True
            return
        self.status = status
        # Asked here: once the message is complete the parser has already reset its flags.
        self.keep_alive = self.parser.should_keep_alive()
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        self.total += len(body)
        if self.total > MAX_BODY_BYTES:
            self._fail(ProtocolViolation(f"response body larger than {MAX_BODY_BYTES} bytes"))
            self.abort()
            return
        if self.buffered > _STREAM_HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.complete = True
        self._wake()

    # -- used by the origin ------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: TransportError) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    async def wait(self) -> None:
        """Until the parser reports progress (or the connection fails)."""
        if self.error is not None:
            raise self.error
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None
        if self.error is not None:
            raise self.error

    def arm(self, deadlines: Deadlines, deadline: float) -> None:
        """Fail the exchange on this connection once `deadline` (the loop's clock) passes: an entry in
        the origin's sweep, where asyncio.timeout would cost a timer, a task lookup and a cancellation."""
        self.deadlines = deadlines
        self.timer = deadlines.add(deadline, self._expire)

    def disarm(self) -> None:
        if self.timer is not None and self.deadlines is not None:
            self.deadlines.remove(self.timer)
            self.timer = None

    def _expire(self) -> None:
        self.timer = None
        self._fail(DeadlinePassed("the deadline passed before the answer was complete"))

    def take_chunks(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and self.error is None

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Response:
    """A provider's answer; `body` is empty until read (a stream reads it with `iter_chunks`)."""

    __slots__ = ("_conn", "_origin", "_released", "body", "raw_headers", "status")

    def __init__(self, origin: Origin, conn: _Connection) -> None:
        self._origin, self._conn, self._released = origin, conn, False
        self.status = conn.status
        self.raw_headers = conn.raw_headers
        self.body = b""

    @property
    def headers(self) -> Mapping[str, str]:
        return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.raw_headers}

    async def read(self, limit: int = MAX_BODY_BYTES) -> bytes:
        """The whole body; one larger than `limit` (as sent) is not read on: the connection is
        closed and the body is empty."""
        conn = self._conn
        parts: list[bytes] = []
        size = 0
        try:
            while True:
                if conn.chunks:
                    parts.append(conn.take_chunks())  # also resumes a socket paused at the high-water mark
                    size += len(parts[-1])
                    if size > limit:
                        self.close()
                        return b""
                if conn.complete:
                    break
                await conn.wait()
        except BaseException:
            self.close()
            raise
        self.release()
        self.body = _decoded(parts[0] if len(parts) == 1 else b"".join(parts), self.raw_headers)
        return self.body

    async def iter_chunks(self, idle_timeout_s: float | None) -> AsyncIterator[bytes]:
        """Body bytes as they arrive; each wait for more is bounded by `idle_timeout_s`."""
        conn = self._conn
        while True:
            if conn.chunks:
                yield conn.take_chunks()
                continue
            if conn.complete:
                return
            if idle_timeout_s is None:
                await conn.wait()
                continue
            conn.arm(self._origin.deadlines, asyncio.get_running_loop().time() + idle_timeout_s)
            try:
                await conn.wait()
            finally:
                conn.disarm()

    def clear_deadline(self) -> None:
        """The request's deadline no longer applies (a stream, once its head is here, is bounded per read)."""
        self._conn.disarm()

    def release(self) -> None:
        """Back to the pool if the whole response was read on a reusable connection, else closed."""
        if not self._released:
            self._released = True
            self._origin._release(self._conn)

    def close(self) -> None:
        if not self._released:
            self._conn.abort()
            self.release()


def _decoded(body: bytes, raw_headers: list[tuple[bytes, bytes]]) -> bytes:
    # No compression is offered; a server that compresses anyway is still understood.
    for name, value in raw_headers:
        if name.lower() == b"content-encoding":
            coding = value.strip().lower()
            if coding in (b"gzip", b"x-gzip", b"deflate"):
                inflater = zlib.decompressobj(wbits=31 if coding != b"deflate" else 15)
                try:
                    plain = inflater.decompress(body, MAX_BODY_BYTES)
                except zlib.error as e:
                    raise ProtocolViolation(f"bad {coding.decode()} body ({e})") from None
                if inflater.unconsumed_tail:
                    raise ProtocolViolation(f"response body larger than {MAX_BODY_BYTES} bytes once decompressed")
                return plain
    return body


class Origin:
    """Pooled connections to one scheme://host:port, with the headers every request carries."""

    def __init__(self, base_url: str, headers: Mapping[str, str], *, max_connections: int,
                 connect_timeout_s: float, keepalive_s: float = _KEEPALIVE_S) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        default_port = (self.scheme == "https" and self.port == 443) or (self.scheme == "http" and self.port == 80)
        host_header = self.host if default_port else f"{self.host}:{self.port}"
        if ":" in self.host:
            host_header = f"[{self.host}]" if default_port else f"[{self.host}]:{self.port}"
        lines = [f"host: {host_header}", *(f"{k}: {v}" for k, v in headers.items())]
        for line in lines:
            if "\r" in line or "\n" in line:
                raise ValueError("header values may not contain line breaks")
        self._static_head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self._targets: dict[str, bytes] = {}  # URL -> request target
        self._idle: collections.deque[_Connection] = collections.deque()
        self._slots = asyncio.Semaphore(max_connections)
        self._connect_timeout_s = connect_timeout_s
        self._keepalive_s = keepalive_s
        self._closed = False
        # Its requests' deadlines, fired up to one sweep interval (10 ms) late: the timeouts they
        # bound are seconds.
        self.deadlines = Deadlines()

    def _request_line(self, url: str, method: str) -> bytes:
        target = self._targets.get(url)
        if target is None:
            parts = urlsplit(url)
            if (parts.scheme, parts.hostname) != (self.scheme, self.host) or (parts.port or self.port) != self.port:
                raise ValueError(f"{url!r} is not on this provider's origin")
            target = ((parts.path or "/") + (f"?{parts.query}" if parts.query else "")).encode("latin-1")
            if len(self._targets) < 1024:  # URLs come from the config, so this stays small
                self._targets[url] = target
        return b"%s %s HTTP/1.1\r\n" % (method.encode("latin-1"), target)

    async def request(self, method: str, url: str, body: bytes, deadline: float | None = None) -> Response:
        """Send the request and wait for the response head; the caller reads or streams the body.

        With a `deadline` (the loop's clock), everything up to the end of the body's read (waiting for
        a pool slot, connecting, the answer) fails with a TimeoutError once it passes."""
        head = self._request_line(url, method) + self._static_head + b"content-length: %d\r\n\r\n" % len(body)
        if deadline is not None and self._slots.locked():
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        else:
            await self._slots.acquire()
        try:
            conn = self._reuse()
            if conn is not None:
                try:
                    return await self._exchange(conn, head, body, deadline)
                except ConnectionLost:
                    if conn.received_any:
                        raise
                    # The server closed the idle connection as we reused it: it never saw this request.
            if deadline is None:
                conn = await self._connect()
            else:
                async with asyncio.timeout_at(deadline):
                    conn = await self._connect()
            return await self._exchange(conn, head, body, deadline)
        except BaseException:
            self._slots.release()
            raise

    async def _exchange(self, conn: _Connection, head: bytes, body: bytes, deadline: float | None) -> Response:
        conn._reset()
        assert conn.transport is not None
        if deadline is not None:
            conn.arm(self.deadlines, deadline)
        try:
            conn.transport.write(head + body if len(body) < 65536 else head)
            if len(body) >= 65536:
                conn.transport.write(body)
            while not conn.head_done:
                await conn.wait()
        except BaseException:
            conn.disarm()
            conn.abort()
            raise
        return Response(self, conn)

    def _reuse(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to have been closed
            if not conn.closed and now - conn.idle_since < self._keepalive_s:
                return conn
            conn.abort()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, conn = await loop.create_connection(_Connection, self.host, self.port, ssl=self._ssl,
                                                       server_hostname=self.host if self._ssl else None)
        except TimeoutError:
            raise ConnectFailed(f"connect timed out after {self._connect_timeout_s:g}s") from None
        except (OSError, ssl.SSLError) as e:
            raise ConnectFailed(f"connect failed: {type(e).__name__}") from None
        return conn

    def _release(self, conn: _Connection) -> None:
        conn.disarm()
        if conn.reusable() and not self._closed:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.abort()
        self._slots.release()

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().abort()
        await self.deadlines.aclose()
