"""The protocol's request read limits, driven chunk by chunk with a fake transport and an injected clock."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from gateway.http.server_protocol import READ_REFUSED, ConnectionLimits
from gateway.http.uvicorn_protocol import LINGER_S, MAX_PIPELINED, GatewayHttpToolsProtocol

LIMITS = dict(max_head_bytes=4096, max_headers=20, head_timeout_s=10.0, body_timeout_s=20.0,
              min_body_rate_bytes_s=1000, max_body_bytes=100_000)
KEEP_ALIVE_S = 75.0


class Transport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = self.eof = self.paused = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1) if name in ("peername", "sockname") else default


class Clock:
    """The loop as the protocol sees it: the time and its timers are the test's; tasks are real."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.now = 1000.0
        self.timers: list[tuple[float, Callable[[], None], asyncio.TimerHandle]] = []
        self._loop = loop

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        handle = asyncio.TimerHandle(when, callback, (), self._loop)
        self.timers.append((when, callback, handle))
        return handle

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while due := [t for t in self.timers if t[0] <= self.now and not t[2].cancelled()]:
            for t in due:
                self.timers.remove(t)
                t[1]()
        self.timers = [t for t in self.timers if not t[2].cancelled()]

    def create_task(self, coro: Any) -> asyncio.Task[None]:
        return self._loop.create_task(coro)

    def call_soon(self, callback: Callable[[], None]) -> asyncio.Handle:
        return self._loop.call_soon(callback)


class App:
    """Reads the whole body, then answers 200 with its length."""

    def __init__(self, **limits: Any) -> None:
        self.refused: list[str] = []
        self.connection_limits = ConnectionLimits(**{**LIMITS, **limits}, refused=self.refused.append)
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls.append(scope)
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        answer = b"%d" % len(body)
        headers = [(b"content-length", b"%d" % len(answer))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


def _connection(app: App) -> tuple[GatewayHttpToolsProtocol, Transport, Clock]:
    clock = Clock(asyncio.get_running_loop())
    config = Config(app=app, lifespan="off", timeout_keep_alive=int(KEEP_ALIVE_S), log_config=None)
    protocol = GatewayHttpToolsProtocol(config, ServerState(), {}, _loop=clock)  # type: ignore[arg-type]
    transport = Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport, clock


def _status(written: bytes) -> int:
    return int(re.match(rb"HTTP/1\.1 (\d{3}) ", written).group(1))  # type: ignore[union-attr]


def _code(written: bytes) -> str:
    code: str = orjson.loads(written.partition(b"\r\n\r\n")[2])["error"]["code"]
    return code


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


POST = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n"


async def test_a_request_within_every_limit_is_served() -> None:
    app = App()
    protocol, transport, _ = _connection(app)
    body = b"x" * 99_000  # a large body in the head's chunk is not counted as head
    protocol.data_received(POST + b"content-length: %d\r\n\r\n" % len(body) + body)
    await _settle()
    assert _status(transport.written) == 200 and transport.written.endswith(b"99000")
    assert not transport.closed and app.refused == []


@pytest.mark.parametrize(("head", "reason", "code"), [
    (POST + b"x-big: " + b"a" * 4096 + b"\r\n\r\n", "head_too_large", "request_header_fields_too_large"),
    (POST + b"".join(b"x-h%d: 1\r\n" % i for i in range(20)) + b"\r\n", "too_many_headers",
     "request_header_fields_too_large"),
    (POST + b"content-length: 100001\r\n\r\n", "body_too_large", "request_too_large"),
])
async def test_a_head_over_a_limit_is_refused_before_the_app(head: bytes, reason: str, code: str) -> None:
    app = App()
    protocol, transport, clock = _connection(app)
    protocol.data_received(head)
    await _settle()
    assert app.calls == [] and app.refused == [reason]
    assert _code(transport.written) == code and b"\r\nconnection: close\r\n" in transport.written
    assert transport.eof and not transport.closed  # answered, then lingering
    protocol.data_received(b"y" * 50_000)  # what the client still sends is dropped
    assert not transport.closed
    clock.advance(LINGER_S)
    assert transport.closed


async def test_the_head_limits_hold_at_their_edge() -> None:
    app = App()
    protocol, transport, _ = _connection(app)
    headers = b"".join(b"x-h%d: 1\r\n" % i for i in range(18))  # host + 18 + content-length: 20
    protocol.data_received(POST + headers + b"content-length: 100000\r\n\r\n" + b"z" * 100_000)
    await _settle()
    assert _status(transport.written) == 200 and app.refused == []


async def test_a_head_growing_over_chunks_is_refused_once_it_passes_the_limit() -> None:
    app = App()
    protocol, transport, _ = _connection(app)
    protocol.data_received(POST + b"x-big: ")
    for _ in range(4):
        protocol.data_received(b"a" * 1000)
        assert transport.written == b""
    protocol.data_received(b"a" * 1000)
    assert _status(transport.written) == 431 and app.refused == ["head_too_large"]


async def test_lingering_stops_after_max_body_bytes() -> None:
    app = App()
    protocol, transport, _ = _connection(app)
    protocol.data_received(POST + b"content-length: 999999999\r\n\r\n")
    protocol.data_received(b"y" * 100_000)
    assert not transport.closed
    protocol.data_received(b"y")
    assert transport.closed


async def test_a_head_not_done_within_the_timeout_is_408() -> None:
    app = App()
    protocol, transport, clock = _connection(app)
    clock.advance(9.0)
    protocol.data_received(POST[:10])
    clock.advance(0.9)
    assert transport.written == b""
    clock.advance(0.1)  # ten seconds after the connection opened
    assert _status(transport.written) == 408 and _code(transport.written) == "request_timeout"
    assert app.refused == ["head_timeout"]


async def test_a_silent_new_connection_is_closed_after_the_head_timeout() -> None:
    app = App()
    _, transport, clock = _connection(app)
    clock.advance(9.99)
    assert not transport.closed
    clock.advance(0.01)
    assert transport.closed and transport.written == b"" and app.refused == ["head_timeout"]


async def test_keep_alive_idle_then_a_new_head_gets_its_own_timeout() -> None:
    app = App()
    protocol, transport, clock = _connection(app)
    protocol.data_received(POST + b"content-length: 2\r\n\r\n{}")
    await _settle()
    assert _status(transport.written) == 200
    clock.advance(KEEP_ALIVE_S - 1)
    assert not transport.closed
    protocol.data_received(POST[:5])  # a head begins: due 10 s from now, however long the idle was
    clock.advance(9.9)
    assert not transport.closed and app.refused == []
    clock.advance(0.1)
    assert app.refused == ["head_timeout"]


async def test_an_idle_keep_alive_connection_closes_after_keep_alive_s() -> None:
    app = App()
    protocol, transport, clock = _connection(app)
    for _ in range(3):
        transport.written = b""
        protocol.data_received(POST + b"content-length: 2\r\n\r\n{}")
        await _settle()
        assert _status(transport.written) == 200
        clock.advance(KEEP_ALIVE_S - 1)
        assert not transport.closed
    clock.advance(1)
    assert transport.closed and app.refused == []


async def test_a_body_is_due_after_body_timeout_plus_one_second_per_min_rate_bytes() -> None:
    app = App()
    protocol, transport, clock = _connection(app)
    protocol.data_received(POST + b"content-length: 10000\r\n\r\n")
    await _settle()
    for _ in range(5):
        clock.advance(5)
        protocol.data_received(b"x" * 1000)  # 200 bytes/s, after a 20 s grace
        await _settle()
    # due at 20 + 5000 / 1000 = 25 s after the head: now
    assert _status(transport.written) == 408 and app.refused == ["body_timeout"]
    assert app.calls[0][READ_REFUSED] == 408


async def test_a_body_at_the_minimum_rate_is_never_due() -> None:
    app = App()
    protocol, transport, clock = _connection(app)
    protocol.data_received(POST + b"content-length: 60000\r\n\r\n")
    for _ in range(60):
        clock.advance(1)
        protocol.data_received(b"x" * 1000)
        await _settle()
    assert _status(transport.written) == 200 and app.refused == []


async def test_an_answered_request_whose_body_trickles_is_closed_not_answered_twice() -> None:
    async def early(scope: Any, receive: Any, send: Any) -> None:  # answers without reading the body (a 401)
        await send({"type": "http.response.start", "status": 401, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    app = App()
    protocol, transport, clock = _connection(app)
    protocol.app = early
    protocol.data_received(POST + b"content-length: 10000\r\n\r\n")
    await _settle()
    assert _status(transport.written) == 401
    clock.advance(21)
    assert app.refused == ["body_timeout"] and transport.closed
    assert transport.written.count(b"HTTP/1.1") == 1  # the 401 alone: a request is answered once


async def test_an_invalid_request_is_400_as_uvicorn_answers_it() -> None:
    app = App()
    protocol, transport, _ = _connection(app)
    protocol.data_received(b"GET / HTTP/1.1\r\ncontent-length: x\r\n\r\n")
    assert transport.written.startswith(b"HTTP/1.1 400 Bad Request\r\n") and transport.closed
    assert app.refused == []


# -- the parser callbacks kept in line give the app what uvicorn's own give it -----------------------

class Recorder:
    """Records the scope and every message the app receives; answers 200 once the body is in."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.seen.append({k: v for k, v in scope.items() if k != "state"})
        while True:
            message = await receive()
            self.seen.append(message)
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


PARITY_CHUNKS = [
    [b"GET /v1/models?x=1 HTTP/1.1\r\nHost: gw\r\nX-Mixed-Case: A\r\n\r\n"],
    [POST + b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n", b"ab", b"cde"],
    [POST + b"transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n", b"2\r\nde\r\n0\r\n\r\n"],
    [b"POST /v1/embeddings HTTP/1.0\r\ncontent-length: 2\r\n\r\n{}"],
    [POST + b"content-length: 2\r\n\r\n{}" + POST + b"content-length: 1\r\n\r\nx"],  # pipelined
    [b"GET /%7Euser HTTP/1.1\r\nhost: gw\r\n\r\n"],
]


@pytest.mark.parametrize("chunks", PARITY_CHUNKS)
async def test_the_app_sees_what_uvicorns_protocol_gives_it(chunks: list[bytes]) -> None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    outcomes = []
    for kind in (HttpToolsProtocol, GatewayHttpToolsProtocol):
        app = Recorder()
        config = Config(app=app, lifespan="off", log_config=None)
        protocol = kind(config, ServerState(), {"k": 1}, _loop=asyncio.get_running_loop())
        transport = Transport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        for chunk in chunks:
            protocol.data_received(chunk)
            await _settle()
        await _settle()
        outcomes.append((app.seen, transport.written, transport.closed))
        protocol.connection_lost(None)
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] and outcomes[0][1].startswith(b"HTTP/1.1 ")


@pytest.mark.parametrize("tail", [
    b"x-trailer: " + b"t" * 70_000,  # one trailer that never ends
    b"".join(b"x-t%d: 1\r\n" % i for i in range(30)),  # more trailers than max_headers allows
])
async def test_a_chunked_bodys_trailers_are_bounded_like_a_head(tail: bytes) -> None:
    app = App()
    protocol, transport, _ = _connection(app)
    protocol.data_received(POST + b"transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n")
    for i in range(0, len(tail), 1000):
        protocol.data_received(tail[i:i + 1000])
        if transport.written:
            break
    assert app.refused == ["trailers_too_large"] and _status(transport.written) == 431


async def test_a_chunked_body_in_small_chunks_is_served() -> None:
    app = App()
    protocol, transport, _ = _connection(app)
    protocol.data_received(POST + b"transfer-encoding: chunked\r\n\r\n")
    for _ in range(5000):
        protocol.data_received(b"1\r\nx\r\n")
    protocol.data_received(b"0\r\nx-one-trailer: ok\r\n\r\n")
    await _settle()
    assert _status(transport.written) == 200 and transport.written.endswith(b"5000") and app.refused == []


async def test_a_huge_request_line_is_bounded_like_a_head() -> None:
    app = App()
    protocol, transport, _ = _connection(app)
    protocol.data_received(b"GET /" + b"a" * 3000)
    protocol.data_received(b"a" * 3000)
    assert _status(transport.written) == 431 and app.refused == ["head_too_large"]


async def test_an_answered_requests_endless_chunked_body_is_dropped_then_closed() -> None:
    async def early(scope: Any, receive: Any, send: Any) -> None:  # a 401: the body is never read
        await send({"type": "http.response.start", "status": 401, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    app = App()
    protocol, transport, clock = _connection(app)
    protocol.app = early
    protocol.data_received(POST + b"transfer-encoding: chunked\r\n\r\n")
    await _settle()
    chunk = b"%x\r\n%s\r\n" % (50_000, b"x" * 50_000)
    for _ in range(32):  # 1.6 MB, fast enough for any rate: dropped, the connection kept
        protocol.data_received(chunk)
        clock.advance(0.01)
    assert not transport.closed
    protocol.data_received(chunk)
    assert transport.closed and app.refused == ["body_too_large"]
    assert transport.written.count(b"HTTP/1.1") == 1


async def test_a_body_is_not_due_while_reading_is_paused() -> None:
    class Slow(App):
        """Takes its body only once told to (the flow control pauses reading past 64 KiB meanwhile)."""

        go = asyncio.Event()

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await self.go.wait()
            await super().__call__(scope, receive, send)

    app = Slow()
    protocol, transport, clock = _connection(app)
    body = b"x" * 99_000
    protocol.data_received(POST + b"content-length: %d\r\n\r\n" % len(body) + body[:70_000])
    await _settle()
    assert protocol.flow.read_paused
    clock.advance(300)  # far past any deadline, but the gateway was not reading
    assert transport.written == b"" and app.refused == []
    app.go.set()
    await _settle()
    protocol.data_received(body[70_000:80_000])  # the rest, as reading resumes
    protocol.data_received(body[80_000:])
    await _settle()
    assert _status(transport.written) == 200 and transport.written.endswith(b"99000") and app.refused == []


async def test_pipelined_requests_past_the_bound_are_dropped_not_queued() -> None:
    # 200 KB of tiny pipelined requests in one read was thousands of queued cycles (8 MB a connection).
    app = App()
    protocol, transport, _ = _connection(app)
    get = b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n"
    protocol.data_received(get * 5000)
    assert len(protocol.pipeline) == MAX_PIPELINED and app.refused == ["too_many_pipelined"]
    protocol.data_received(get * 100)  # what comes after is dropped, not parsed
    assert len(protocol.pipeline) == MAX_PIPELINED
    for _ in range(MAX_PIPELINED + 5):
        await _settle()
    # Each queued request is answered; the last answer closes the connection.
    assert transport.written.count(b"HTTP/1.1 200 ") == MAX_PIPELINED + 1 and transport.closed


async def test_pipelined_requests_within_the_bound_are_all_answered() -> None:
    app = App()
    protocol, transport, _ = _connection(app)
    protocol.data_received((POST + b"content-length: 2\r\n\r\n{}") * (MAX_PIPELINED + 1))
    for _ in range(MAX_PIPELINED + 5):
        await _settle()
    assert transport.written.count(b"HTTP/1.1 200 ") == MAX_PIPELINED + 1
    assert app.refused == [] and not transport.closed


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.1\r\ncontent-length: x\r\n\r\n",
    POST + b"content-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
    POST + b"content-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # TLS to the plain-text port
])
async def test_an_unparsable_request_is_400_in_openais_error_shape(request_bytes: bytes) -> None:
    app = App()
    protocol, transport, _ = _connection(app)
    protocol.data_received(request_bytes)
    head, _, body = transport.written.partition(b"\r\n\r\n")
    assert _status(transport.written) == 400 and transport.closed and app.calls == []
    assert b"\r\ncontent-type: application/json\r\n" in head and b"\r\nconnection: close" in head
    assert orjson.loads(body) == {"error": {"message": "Invalid HTTP request received.",
                                            "type": "invalid_request_error", "param": None,
                                            "code": "invalid_http_request"}}


async def test_an_answer_its_client_does_not_read_is_aborted_after_the_send_timeout() -> None:
    app = App(send_timeout_s=30.0)
    protocol, transport, clock = _connection(app)
    aborted: list[bool] = []
    transport.abort = lambda: aborted.append(True)  # type: ignore[attr-defined]
    protocol.data_received(POST + b"content-length: 2\r\n\r\n{}")
    await _settle()
    protocol.pause_writing()  # the client stopped reading: the transport's buffer is full
    clock.advance(25)
    protocol.resume_writing()  # it read some: the wait starts again
    clock.advance(25)
    protocol.pause_writing()
    clock.advance(25)
    assert not aborted and app.refused == []
    clock.advance(15)  # 30 s without reading, plus the timer's granularity (at most head_timeout_s)
    assert aborted == [True] and app.refused == ["send_timeout"]


@pytest.mark.parametrize("method", [b"GET", b"POST", b"OPTIONS"])
async def test_a_head_of_exactly_max_head_bytes_is_served_and_one_byte_more_is_431(method: bytes) -> None:
    for extra, status in ((0, 200), (1, 431)):
        app = App()
        protocol, transport, _ = _connection(app)
        start = method + b" /v1/models HTTP/1.1\r\nhost: gw\r\nx-pad: "
        head = start + b"a" * (LIMITS["max_head_bytes"] - len(start) - 4 + extra) + b"\r\n\r\n"  # type: ignore[operator]
        assert len(head) == LIMITS["max_head_bytes"] + extra
        protocol.data_received(head)
        await _settle()
        assert _status(transport.written) == status, (method, extra)


@pytest.mark.parametrize(("second", "status", "reason"), [
    (POST + b"content-length: 999999999\r\n\r\nxx", 413, "body_too_large"),
    (POST + b"".join(b"x-h%d: 1\r\n" % i for i in range(30)) + b"\r\n", 431, "too_many_headers"),
])
async def test_a_request_refused_behind_a_pipelined_one_is_answered_after_it(
        second: bytes, status: int, reason: str) -> None:
    app = App()
    protocol, transport, clock = _connection(app)
    protocol.data_received(POST + b"content-length: 2\r\n\r\n{}" + second)
    await _settle()
    first, _, rest = transport.written.partition(b"\r\n\r\n2")
    assert _status(first) == 200 and b"connection: close" not in first
    assert _status(rest) == status and transport.eof and app.refused == [reason]
    assert len(app.calls) == 1
    clock.advance(LINGER_S)
    assert transport.closed
