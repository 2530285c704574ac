"""The response head waits for its body and leaves in the same write; nothing is reordered or lost."""

import asyncio
import logging

import pytest
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from gateway.http.uvicorn_protocol import _HeadJoiningTransport, _LeanCycle


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1) if name == "peername" else default


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


async def test_head_and_body_leave_in_one_write() -> None:
    raw = RecordingTransport()
    t = _HeadJoiningTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(HEAD)
    assert raw.writes == []
    t.write(b"{}")
    assert raw.writes == [HEAD + b"{}"]
    await asyncio.sleep(0)  # the scheduled flush finds nothing left
    assert raw.writes == [HEAD + b"{}"]


async def test_a_head_without_a_body_leaves_within_the_loop_iteration() -> None:
    raw = RecordingTransport()
    t = _HeadJoiningTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    await asyncio.sleep(0)
    assert raw.writes == [b"HTTP/1.1 204 No Content\r\n\r\n"]


async def test_stream_chunks_pass_straight_through_in_order() -> None:
    raw = RecordingTransport()
    t = _HeadJoiningTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(HEAD)
    t.write(b"a\r\nfirst\r\n")
    t.write(b"b\r\nsecond\r\n")
    t.write(b"HTTP/1.1 200 OK\r\n\r\n")  # the next response on the connection
    t.write(b"x")
    assert raw.writes == [HEAD + b"a\r\nfirst\r\n", b"b\r\nsecond\r\n", b"HTTP/1.1 200 OK\r\n\r\nx"]


async def test_close_sends_a_held_head_first_and_the_rest_is_forwarded() -> None:
    raw = RecordingTransport()
    t = _HeadJoiningTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(HEAD)
    t.close()
    assert raw.writes == [HEAD] and raw.closed and t.is_closing()
    assert t.get_extra_info("peername") == ("127.0.0.1", 1)
    await asyncio.sleep(0)
    assert raw.writes == [HEAD]


# -- the lean response head: byte for byte what uvicorn writes, or uvicorn's own code -------------

DATE = [(b"date", b"Mon, 30 Nov 2026 12:00:00 GMT")]


def _cycle(kind: type[RequestResponseCycle], method: str = "POST", keep_alive: bool = True
           ) -> tuple[RequestResponseCycle, RecordingTransport]:
    transport = RecordingTransport()
    cycle = kind(scope={"method": method, "type": "http"}, transport=transport,  # type: ignore[arg-type]
                 flow=FlowControl(transport), logger=logging.getLogger("t"),  # type: ignore[arg-type]
                 access_logger=logging.getLogger("t.access"), access_log=False, default_headers=DATE,
                 message_event=asyncio.Event(), expect_100_continue=False, keep_alive=keep_alive,
                 on_response=lambda: None)
    return cycle, transport


async def _outcome(kind: type[RequestResponseCycle], status: int, headers: list[tuple[bytes, bytes]],
                   method: str = "POST", keep_alive: bool = True) -> tuple[object, ...]:
    cycle, transport = _cycle(kind, method, keep_alive)
    try:
        await cycle.send({"type": "http.response.start", "status": status, "headers": headers})
    except Exception as e:
        return (type(e), str(e))
    return (transport.writes, cycle.response_started, cycle.chunked_encoding, cycle.expected_content_length,
            cycle.keep_alive, cycle.waiting_for_100_continue)


HEADS = [
    (200, [(b"content-type", b"application/json"), (b"content-length", b"17"), (b"x-request-id", b"req_1"),
           (b"x-ratelimit-reset-tokens", b"1.500s"), (b"x-odd", b"tab\tand \xc3\xa9")]),
    (200, [(b"content-type", b"text/event-stream")]),  # no length: chunked
    (204, []),
    (304, [(b"etag", b'"x"')]),
    (200, [(b"content-length", b"3"), (b"content-length", b"9")]),  # the first one counts
    (200, [(b"Content-Length", b"5"), (b"X-Upper", b"a")]),  # uvicorn lower-cases
    (200, [(b"content-length", b"2"), (b"connection", b"close")]),
    (200, [(b"transfer-encoding", b"chunked")]),
    (200, [(b"content-length", b" 12")]),
    (200, [(b"content-length", b"x")]),  # uvicorn's ValueError
    (200, [(b"x-bad", b"a\r\nset-cookie: injected")]),  # uvicorn's RuntimeError
    (200, [(b"x bad", b"a")]),
    (200, [(b"x-nul", b"a\x00b")]),
    (200, [(b"x-del", b"\x7f")]),
    (500, [(b"content-length", b"0")]),
]


@pytest.mark.parametrize(("status", "headers"), HEADS)
@pytest.mark.parametrize("method", ["POST", "HEAD"])
@pytest.mark.parametrize("keep_alive", [True, False])
async def test_the_lean_head_is_what_uvicorn_writes(status: int, headers: list[tuple[bytes, bytes]], method: str,
                                                    keep_alive: bool) -> None:
    assert await _outcome(_LeanCycle, status, headers, method, keep_alive) == await _outcome(
        RequestResponseCycle, status, headers, method, keep_alive)


async def test_the_lean_cycle_sends_bodies_as_uvicorn_does() -> None:
    cycle, transport = _cycle(_LeanCycle)
    await cycle.send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
    await cycle.send({"type": "http.response.body", "body": b"ab", "more_body": True})
    await cycle.send({"type": "http.response.body", "body": b"cd"})
    assert transport.writes[1:] == [b"ab", b"cd"] and cycle.response_complete
    with pytest.raises(RuntimeError, match=r"Expected ASGI message 'http\.response\.start'"):
        await _cycle(_LeanCycle)[0].send({"type": "http.response.body", "body": b""})


def test_the_gateways_own_heads_take_the_lean_path() -> None:
    cycle, _ = _cycle(_LeanCycle)
    assert isinstance(cycle, _LeanCycle)
    assert cycle._head(200, [*DATE, *HEADS[0][1]]) is not None
    assert cycle._head(200, [*DATE, (b"content-type", b"text/event-stream")]) is not None
    assert cycle._head(200, [*DATE, (b"X-Upper", b"a")]) is None
