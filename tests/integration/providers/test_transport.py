"""transport.Origin over real loopback connections.

Most tests run a small asyncio server whose handler speaks raw HTTP/1.1 bytes, so framing, closing
and timing are exactly what the test says; the last ones talk to the real `gateway mock-upstream`
process, directly and through the provider engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from gateway.errors import UpstreamError, UpstreamUnavailable
from gateway.providers.registry import build_providers
from gateway.providers.transport import ConnectFailed, ConnectionLost, Origin, ProtocolViolation
from gateway.settings import ProviderSettings
from tests.support.processes import RunningProcess, free_port, start_mock_upstream
from tests.support.tcpproxy import TcpProxy

LIMIT_S = 2.0  # no single wait in these tests should come near this; a deadlock fails fast instead


# -- a raw HTTP/1.1 server ---------------------------------------------------------------------
@dataclass
class Request:
    head: bytes  # request line and headers, with the blank line
    body: bytes

    @property
    def line(self) -> str:
        return self.head.split(b"\r\n", 1)[0].decode("latin-1")

    @property
    def target(self) -> str:
        return self.line.split(" ")[1]


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request on a connection, or None when the client closed it."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return Request(head, await reader.readexactly(length))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


@dataclass
class Peer:
    """One accepted connection, as a handler sees it."""

    index: int  # 0 for the first connection the server accepted
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    server: RawServer

    async def next_request(self) -> Request | None:
        request = await read_request(self.reader)
        if request is None:
            self.server.eofs += 1
            self.server.eof_seen.set()
        else:
            self.server.requests.append(request)
        return request

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()


Handler = Callable[[Peer], Awaitable[None]]


@dataclass
class RawServer:
    """A loopback server running `handler` per connection; counts what it sees."""

    handler: Handler
    connections: int = 0
    eofs: int = 0  # connections whose client closed them (seen by `Peer.next_request`)
    eof_seen: asyncio.Event = field(default_factory=asyncio.Event)
    requests: list[Request] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _origins: list[Origin] = field(default_factory=list)
    _failures: list[BaseException] = field(default_factory=list)

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for origin in self._origins:
            await origin.aclose()
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()
        if self._failures and exc[0] is None:
            raise self._failures[0]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        peer = Peer(self.connections, reader, writer, self)
        self.connections += 1
        try:
            await self.handler(peer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception as e:  # shown by __aexit__: a broken handler must not pass as a client bug
            self._failures.append(e)
        finally:
            self._tasks.discard(task)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def origin(self, *, max_connections: int = 8, **options: Any) -> Origin:
        """An Origin on this server, closed with it."""
        origin = Origin(self.base, options.pop("headers", {}), max_connections=max_connections,
                        connect_timeout_s=options.pop("connect_timeout_s", 1.0), **options)
        self._origins.append(origin)
        return origin

    async def wait_eofs(self, count: int) -> None:
        """Until `count` connections have been closed by the client."""
        async with asyncio.timeout(LIMIT_S):
            while self.eofs < count:
                self.eof_seen.clear()
                await self.eof_seen.wait()

    @property
    def lines(self) -> list[str]:
        return [r.line for r in self.requests]


def response(body: bytes = b"ok", *headers: str, status: str = "200 OK", version: str = "1.1",
             length: bool = True) -> bytes:
    lines = [f"HTTP/{version} {status}", *([f"content-length: {len(body)}"] if length else []), *headers]
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


def echo(request: Request) -> bytes:
    """The request target back, so a test can tell its answers apart."""
    return response(request.target.encode())


def answering(make: Callable[[Request], bytes] = echo, *, delay_s: float = 0.0) -> Handler:
    """Answers every request on the connection with `make(request)`, keeping it open."""
    async def handle(peer: Peer) -> None:
        while (request := await peer.next_request()) is not None:
            if delay_s:
                await asyncio.sleep(delay_s)
            peer.send(make(request))
    return handle


async def fetch(origin: Origin, url: str, body: bytes = b"", method: str = "POST") -> tuple[int, bytes]:
    async with asyncio.timeout(LIMIT_S):
        resp = await origin.request(method, url, body)
        return resp.status, await resp.read()


# -- keep-alive and the connection cap ---------------------------------------------------------
async def test_sequential_requests_share_one_connection() -> None:
    async with RawServer(answering()) as server:
        origin = server.origin()
        for i in range(50):
            assert await fetch(origin, server.url(f"/n/{i}")) == (200, f"/n/{i}".encode())
        assert server.connections == 1 and len(server.requests) == 50


async def test_concurrent_requests_never_open_more_than_max_connections() -> None:
    async with RawServer(answering(delay_s=0.02)) as server:
        origin = server.origin(max_connections=4)
        results = await asyncio.gather(*(fetch(origin, server.url(f"/c/{i}")) for i in range(20)))
        assert results == [(200, f"/c/{i}".encode()) for i in range(20)]
        assert server.connections == 4 and len(server.requests) == 20


async def test_idle_connection_past_keepalive_is_not_reused() -> None:
    async with RawServer(answering()) as server:
        origin = server.origin(keepalive_s=0.05)
        await fetch(origin, server.url("/a"))
        await asyncio.sleep(0.1)
        await fetch(origin, server.url("/b"))
        assert server.connections == 2
        await server.wait_eofs(1)  # the expired one was closed by the client


# -- responses that end the connection ---------------------------------------------------------
@pytest.mark.parametrize(("version", "headers"), [("1.1", ("connection: close",)), ("1.0", ())],
                         ids=["connection-close", "http-1.0"])
async def test_a_response_that_ends_the_connection_is_read_and_not_reused(version: str,
                                                                         headers: tuple[str, ...]) -> None:
    # The server keeps its end open: not reusing the connection is the client's own decision.
    def make(request: Request) -> bytes:
        return response(request.target.encode(), *headers, version=version)

    async with RawServer(answering(make)) as server:
        origin = server.origin()
        for i in range(3):
            assert await fetch(origin, server.url(f"/{i}")) == (200, f"/{i}".encode())
        assert server.connections == 3
        await server.wait_eofs(3)


@pytest.mark.parametrize("version", ["1.1", "1.0"])
async def test_a_close_delimited_body_reads_completely(version: str) -> None:
    async def handle(peer: Peer) -> None:
        if await peer.next_request() is None:
            return
        peer.send(response(b"", "content-type: text/plain", version=version, length=False) + b"first part, ")
        await peer.drain()
        await asyncio.sleep(0.02)
        peer.send(b"second part")
        peer.writer.close()

    async with RawServer(handle) as server:
        origin = server.origin()
        assert await fetch(origin, server.url("/a")) == (200, b"first part, second part")
        assert await fetch(origin, server.url("/b")) == (200, b"first part, second part")
        assert server.connections == 2


# -- chunked bodies and streaming --------------------------------------------------------------
async def test_a_chunked_body_sent_with_pauses_reads_completely_and_the_connection_is_reused() -> None:
    async def handle(peer: Peer) -> None:
        while await peer.next_request() is not None:
            peer.send(CHUNKED_HEAD)
            for part in (b"alpha ", b"beta ", b"gamma"):
                peer.send(chunk(part))
                await peer.drain()
                await asyncio.sleep(0.01)
            peer.send(LAST_CHUNK)

    async with RawServer(handle) as server:
        origin = server.origin()
        assert await fetch(origin, server.url("/a")) == (200, b"alpha beta gamma")
        assert await fetch(origin, server.url("/b")) == (200, b"alpha beta gamma")
        assert server.connections == 1


async def test_iter_chunks_yields_data_as_it_arrives() -> None:
    first_seen = asyncio.Event()

    async def handle(peer: Peer) -> None:
        if await peer.next_request() is None:
            return
        peer.send(CHUNKED_HEAD + chunk(b"data: one\n\n"))
        await first_seen.wait()  # the rest only once the client has the first chunk in hand
        peer.send(chunk(b"data: two\n\n") + chunk(b"data: three\n\n") + LAST_CHUNK)

    async with RawServer(handle) as server:
        origin = server.origin()
        async with asyncio.timeout(LIMIT_S):
            resp = await origin.request("POST", server.url("/stream"), b"{}")
            received: list[bytes] = []
            async for data in resp.iter_chunks(1.0):
                received.append(data)
                first_seen.set()
            resp.release()
        assert received[0] == b"data: one\n\n"
        assert b"".join(received) == b"data: one\n\ndata: two\n\ndata: three\n\n"


# -- stale and broken pooled connections -------------------------------------------------------
@pytest.mark.parametrize("how", ["closed-while-idle", "fin-on-arrival", "rst-on-arrival"])
async def test_a_pooled_connection_the_server_dropped_is_replaced_transparently(how: str) -> None:
    dropped: list[bytes] = []

    async def handle(peer: Peer) -> None:
        if peer.index > 0:
            return await answering()(peer)
        if await peer.next_request() is None:
            return
        peer.send(response(b"first"))
        await peer.drain()
        if how == "closed-while-idle":
            peer.writer.close()
            return
        # The idle close crossing the next request: its bytes arrive, and are never read as a request.
        dropped.append(await peer.reader.read(1))
        if how == "rst-on-arrival":
            peer.writer.transport.abort()
        else:
            peer.writer.close()

    async with RawServer(handle) as server:
        origin = server.origin(max_connections=1)
        assert await fetch(origin, server.url("/first")) == (200, b"first")
        if how == "closed-while-idle":
            await asyncio.sleep(0.05)  # the client sees the close before it reuses the connection
        assert await fetch(origin, server.url("/second"), b"{}") == (200, b"/second")
        assert server.connections == 2
        assert server.lines == ["POST /first HTTP/1.1", "POST /second HTTP/1.1"]
        assert dropped == ([] if how == "closed-while-idle" else [b"P"])


@pytest.mark.parametrize("where", ["in-the-head", "in-the-body"])
async def test_a_reused_connection_lost_mid_response_raises_and_is_not_retried(where: str) -> None:
    async def handle(peer: Peer) -> None:
        if peer.index > 0:
            return await answering()(peer)
        if await peer.next_request() is None:
            return
        peer.send(response(b"first"))
        if await peer.next_request() is None:
            return
        partial = b"HTTP/1.1 200 OK\r\ncontent-" if where == "in-the-head" else response(b"0123456789")[:-4]
        peer.send(partial)
        await peer.drain()
        peer.writer.close()

    async with RawServer(handle) as server:
        origin = server.origin(max_connections=1)
        await fetch(origin, server.url("/first"))
        with pytest.raises(ConnectionLost):
            async with asyncio.timeout(LIMIT_S):
                resp = await origin.request("POST", server.url("/second"), b"")
                assert where == "in-the-body" and resp.status == 200
                await resp.read()
        assert server.connections == 1 and len(server.requests) == 2  # sent once: no retry
        assert await fetch(origin, server.url("/third")) == (200, b"/third")  # the slot came back
        assert server.connections == 2


# -- failures to connect -----------------------------------------------------------------------
async def test_connect_refused_is_connect_failed_at_once() -> None:
    port = free_port()
    origin = Origin(f"http://127.0.0.1:{port}", {}, max_connections=1, connect_timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(ConnectFailed):
        await origin.request("POST", f"http://127.0.0.1:{port}/x", b"")
    assert time.monotonic() - started < 0.5
    with pytest.raises(ConnectFailed):  # the failed attempt gave its slot back
        async with asyncio.timeout(LIMIT_S):
            await origin.request("POST", f"http://127.0.0.1:{port}/x", b"")


async def test_connect_timeout_is_connect_failed() -> None:
    # A listener that never accepts, its backlog already full: the kernel drops further SYNs, so a
    # connect hangs. (A "non-routable" address is no good here: this sandbox answers 10.255.255.1.)
    with socket.socket() as listener, contextlib.ExitStack() as fillers:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(3):
            filler = fillers.enter_context(socket.socket())
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        await asyncio.sleep(0.02)
        origin = Origin(f"http://127.0.0.1:{port}", {}, max_connections=1, connect_timeout_s=0.2)
        started = time.monotonic()
        with pytest.raises(ConnectFailed, match="timed out"):
            await origin.request("POST", f"http://127.0.0.1:{port}/x", b"")
        assert 0.15 < time.monotonic() - started < 1.0


async def test_https_to_a_server_that_does_not_speak_tls_is_connect_failed() -> None:
    async def handle(peer: Peer) -> None:
        await peer.reader.read(1)  # the ClientHello
        peer.send(response(b"not tls", status="400 Bad Request", version="1.0"))
        peer.writer.close()

    async with RawServer(handle) as server:
        origin = Origin(f"https://127.0.0.1:{server.port}", {}, max_connections=1, connect_timeout_s=1.0)
        with pytest.raises(ConnectFailed):
            async with asyncio.timeout(LIMIT_S):
                await origin.request("POST", f"https://127.0.0.1:{server.port}/x", b"")


# -- broken responses --------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [
    b"garbage\r\n\r\n",
    b"HTTP/1.1 2x0 OK\r\ncontent-length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\ncontent-length: two\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
], ids=["no-status-line", "bad-status", "bad-length", "bad-chunk-size"])
async def test_a_malformed_response_is_a_protocol_violation_and_the_connection_is_dropped(bad: bytes) -> None:
    async def handle(peer: Peer) -> None:
        await answering(lambda r: bad if peer.index == 0 else echo(r))(peer)

    async with RawServer(handle) as server:
        origin = server.origin(max_connections=1)
        with pytest.raises(ProtocolViolation):
            async with asyncio.timeout(LIMIT_S):
                resp = await origin.request("POST", server.url("/bad"), b"")
                await resp.read()
        assert await fetch(origin, server.url("/good")) == (200, b"/good")
        assert server.connections == 2
        await server.wait_eofs(1)


async def test_a_request_without_an_answer_times_out_and_frees_its_slot() -> None:
    def make(request: Request) -> bytes:
        return b"" if request.target == "/hang" else echo(request)

    async with RawServer(answering(make)) as server:
        origin = server.origin(max_connections=1)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await origin.request("POST", server.url("/hang"), b"")
        assert time.monotonic() - started < 0.5
        assert await fetch(origin, server.url("/ok")) == (200, b"/ok")
        assert server.connections == 2
        await server.wait_eofs(1)  # the hung connection was closed, not pooled


# -- bodies ------------------------------------------------------------------------------------
BIG = bytes(range(256)) * (3 * 1024 * 1024 // 256)  # 3 MiB, far above the 256 KiB high-water mark


async def test_a_large_body_reads_completely_through_read() -> None:
    async with RawServer(answering(lambda r: response(BIG))) as server:
        origin = server.origin()
        async with asyncio.timeout(LIMIT_S):
            resp = await origin.request("POST", server.url("/big"), b"")
            await asyncio.sleep(0.05)  # let the buffer pass the high-water mark: reading pauses
            assert await resp.read() == BIG
        assert await fetch(origin, server.url("/big")) == (200, BIG)
        assert server.connections == 1


async def test_a_large_chunked_body_streams_completely_through_iter_chunks() -> None:
    async def handle(peer: Peer) -> None:
        while await peer.next_request() is not None:
            peer.send(CHUNKED_HEAD)
            for at in range(0, len(BIG), 64 * 1024):
                peer.send(chunk(BIG[at:at + 64 * 1024]))
            peer.send(LAST_CHUNK)

    async with RawServer(handle) as server:
        origin = server.origin()
        for _ in range(2):
            async with asyncio.timeout(LIMIT_S):
                resp = await origin.request("POST", server.url("/big"), b"")
                await asyncio.sleep(0.05)
                parts = [data async for data in resp.iter_chunks(1.0)]
                resp.release()
            assert b"".join(parts) == BIG and len(parts) > 1
        assert server.connections == 1


@pytest.mark.parametrize(("coding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)])
async def test_a_compressed_body_is_decoded_by_read(coding: str, compress: Callable[[bytes], bytes]) -> None:
    plain = b'{"answer": "' + b"compressible " * 1000 + b'"}'
    async with RawServer(answering(lambda r: response(compress(plain), f"content-encoding: {coding}"))) as server:
        origin = server.origin()
        assert await fetch(origin, server.url("/z")) == (200, plain)


async def test_a_corrupt_compressed_body_is_a_protocol_violation() -> None:
    async with RawServer(answering(lambda r: response(b"not gzip at all", "content-encoding: gzip"))) as server:
        origin = server.origin()
        with pytest.raises(ProtocolViolation):
            await fetch(origin, server.url("/z"))


@pytest.mark.parametrize("how", ["cancel-read", "idle-stream-then-close", "abandon-stream"])
async def test_giving_up_mid_body_closes_the_connection_and_frees_the_slot(how: str) -> None:
    async def handle(peer: Peer) -> None:
        if peer.index > 0:
            return await answering()(peer)
        if await peer.next_request() is None:
            return
        peer.send(response(b"x" * 1000)[:-990])  # the head and 10 of 1000 body bytes, then nothing
        await peer.next_request()  # until the client closes

    async with RawServer(handle) as server:
        origin = server.origin(max_connections=1)
        async with asyncio.timeout(LIMIT_S):
            resp = await origin.request("POST", server.url("/slow"), b"")
            if how == "cancel-read":
                reading = asyncio.create_task(resp.read())
                await asyncio.sleep(0.05)
                reading.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await reading
            elif how == "idle-stream-then-close":
                with pytest.raises(TimeoutError):
                    async for _ in resp.iter_chunks(0.05):
                        pass
                resp.close()
            else:
                async for data in resp.iter_chunks(1.0):
                    assert data == b"x" * 10
                    break
                resp.close()
        await server.wait_eofs(1)
        assert await fetch(origin, server.url("/next")) == (200, b"/next")
        assert server.connections == 2


# -- the request on the wire -------------------------------------------------------------------
async def test_the_request_bytes_on_the_wire() -> None:
    async with RawServer(answering()) as server:
        origin = server.origin(headers={"authorization": "Bearer sk-test", "x-tenant": "t1"})
        await fetch(origin, server.url("/v1/chat/completions?api-version=2024-10-21"), b'{"a":1}')
        assert server.requests[0].head == (
            b"POST /v1/chat/completions?api-version=2024-10-21 HTTP/1.1\r\n"
            b"host: 127.0.0.1:%d\r\nauthorization: Bearer sk-test\r\nx-tenant: t1\r\n"
            b"content-length: 7\r\n\r\n" % server.port)
        assert server.requests[0].body == b'{"a":1}'
        large = bytes(range(256)) * 400  # over 64 KiB: written separately from the head
        await fetch(origin, server.url(""), large)
        await fetch(origin, server.url("?q=1"), b"")
        assert [r.line for r in server.requests[1:]] == ["POST / HTTP/1.1", "POST /?q=1 HTTP/1.1"]
        assert server.requests[1].body == large and b"content-length: 102400\r\n" in server.requests[1].head
        assert server.connections == 1


async def test_bad_origins_urls_and_headers_are_refused_before_anything_is_sent() -> None:
    with pytest.raises(ValueError, match="not an http"):
        Origin("ftp://127.0.0.1/", {}, max_connections=1, connect_timeout_s=1.0)
    with pytest.raises(ValueError, match="line breaks"):
        Origin("http://127.0.0.1:1/", {"x-evil": "a\r\nhost: elsewhere"}, max_connections=1, connect_timeout_s=1.0)
    async with RawServer(answering()) as server:
        origin = server.origin(max_connections=1)
        for url in (f"http://127.0.0.2:{server.port}/x", f"http://127.0.0.1:{server.port + 1}/x",
                    f"https://127.0.0.1:{server.port}/x"):
            with pytest.raises(ValueError, match="not on this provider's origin"):
                await origin.request("POST", url, b"")
        assert await fetch(origin, server.url("/x")) == (200, b"/x")  # no slot was taken
        assert server.lines == ["POST /x HTTP/1.1"]


# -- defects found and fixed -------------------------------------------------------------------
async def test_the_method_is_not_taken_from_an_earlier_request_to_the_same_url() -> None:
    async with RawServer(answering()) as server:
        origin = server.origin()
        await fetch(origin, server.url("/x"), method="POST")
        await fetch(origin, server.url("/x"), method="GET")
        assert server.lines == ["POST /x HTTP/1.1", "GET /x HTTP/1.1"]


async def test_an_interim_1xx_response_is_skipped() -> None:
    async def handle(peer: Peer) -> None:
        while (request := await peer.next_request()) is not None:
            peer.send(b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n")
            await peer.drain()
            await asyncio.sleep(0.02)
            peer.send(echo(request))

    async with RawServer(handle) as server:
        origin = server.origin(max_connections=1)
        assert await fetch(origin, server.url("/a")) == (200, b"/a")
        assert await fetch(origin, server.url("/b")) == (200, b"/b")


# -- the real mock upstream --------------------------------------------------------------------
MESSAGES: Any = [{"role": "user", "content": "What is the capital of France?"}]


class CountingProxy(TcpProxy):
    """The suite's TCP forwarder, counting the connections it accepts."""

    accepted = 0

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        await super()._accept(reader, writer)


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningProcess]:
    proc = start_mock_upstream()
    yield proc
    proc.stop()


@pytest.fixture
async def proxied_origin(mock: RunningProcess) -> AsyncIterator[tuple[Origin, CountingProxy]]:
    host, port = mock.url.removeprefix("http://").rsplit(":", 1)
    proxy = CountingProxy(host, int(port))
    await proxy.start()
    origin = Origin(f"http://127.0.0.1:{proxy.port}", {"content-type": "application/json"},
                    max_connections=4, connect_timeout_s=1.0)
    try:
        yield origin, proxy
    finally:
        await origin.aclose()
        await proxy.stop()


def _sse_data(stream: bytes) -> list[bytes]:
    return [line[6:] for line in stream.split(b"\n") if line.startswith(b"data: ")]


async def test_chat_and_stream_against_the_mock_upstream_on_one_connection(
        proxied_origin: tuple[Origin, CountingProxy]) -> None:
    origin, proxy = proxied_origin
    url = f"http://127.0.0.1:{proxy.port}/v1/chat/completions"
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    status, raw = await fetch(origin, url, orjson.dumps(body))
    answer = orjson.loads(raw)
    assert status == 200 and answer["object"] == "chat.completion"
    content = answer["choices"][0]["message"]["content"]
    assert content == "Mock answer to: What is the capital of France?"

    async with asyncio.timeout(LIMIT_S):
        resp = await origin.request("POST", url, orjson.dumps({**body, "stream": True}))
        assert resp.status == 200 and resp.headers["content-type"].startswith("text/event-stream")
        stream = b"".join([data async for data in resp.iter_chunks(1.0)])
        resp.release()
    payloads = _sse_data(stream)
    assert payloads[-1] == b"[DONE]"
    chunks = [orjson.loads(p) for p in payloads[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == content

    assert (await fetch(origin, url, orjson.dumps(body)))[0] == 200
    assert proxy.accepted == 1  # uvicorn kept the connection alive through all three


# -- the provider engine on the mock upstream ---------------------------------------------------
async def test_the_provider_engine_maps_answers_and_failures(mock: RunningProcess) -> None:
    settings = ProviderSettings(kind="openai", base_url=mock.url + "/v1", api_key="sk-test", timeout_s=5.0)
    provider = build_providers({"up": settings})["up"]
    await provider.start()
    try:
        result = await provider.chat({"messages": MESSAGES}, "gpt-4o-mini", timeout_s=5.0)
        assert orjson.loads(result.body)["choices"][0]["message"]["content"].startswith("Mock answer to:")
        assert result.finish_reason == "stop" and result.usage.reported

        stream = await provider.chat_stream({"messages": MESSAGES, "stream": True}, "gpt-4o-mini",
                                            timeout_s=5.0, include_usage=True)
        payloads = [orjson.loads(p) async for p in stream.chunks]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in payloads if c["choices"])
        assert text == orjson.loads(result.body)["choices"][0]["message"]["content"]
        assert stream.translator.finish_reason == "stop" and stream.usage == result.usage

        failing: Any = [{"role": "user", "content": 'fail #mock{"status": 500}'}]
        with pytest.raises(UpstreamError) as failed:
            await provider.chat({"messages": failing}, "gpt-4o-mini", timeout_s=5.0)
        assert type(failed.value) is UpstreamError and "HTTP 500" in str(failed.value)

        dropping: Any = [{"role": "user", "content": 'drop #mock{"fault": "reset"}'}]
        with pytest.raises(UpstreamUnavailable):
            await provider.chat({"messages": dropping}, "gpt-4o-mini", timeout_s=5.0)
        with pytest.raises(UpstreamUnavailable):
            stream = await provider.chat_stream({"messages": dropping, "stream": True}, "gpt-4o-mini",
                                                timeout_s=5.0, include_usage=False)
            async for _ in stream.chunks:
                pass

        again = await provider.chat({"messages": MESSAGES}, "gpt-4o-mini", timeout_s=5.0)
        assert again.body == result.body  # the pool recovered
    finally:
        await provider.aclose()
