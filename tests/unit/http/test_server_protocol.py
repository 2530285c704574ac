"""The response head waits for its body and leaves in the same write; nothing is reordered or lost."""

import asyncio

from gateway.http.server_protocol import _HeadJoiningTransport


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
