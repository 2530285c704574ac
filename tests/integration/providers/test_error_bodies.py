"""A provider's error answers against a real TCP server: only their first MiB is read.

An error body is shown as a scrubbed message of at most 1,024 characters, so reading one of tens of
megabytes (up to the 64 MiB any answer may have) only cost memory: a 20 MB error took 56 MB.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from gateway.errors import UpstreamRejected
from gateway.providers.http import HttpProvider
from gateway.providers.openai import OpenAIDialect
from gateway.settings import ProviderSettings

HUGE = 20_000_000


class ErrorServer:
    """Answers every request 400: a small OpenAI error, or (for model `huge`) one of 20 MB."""

    def __init__(self) -> None:
        self.huge_sent_whole = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                request = orjson.loads(await reader.readexactly(length))
                message = "x" * HUGE if request["model"] == "huge" else "bad value"
                body = orjson.dumps({"error": {"message": message, "type": "invalid_request_error",
                                               "param": "p", "code": "c"}})
                writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n" % len(body))
                for i in range(0, len(body), 65536):
                    writer.write(body[i:i + 65536])
                    await writer.drain()
                await writer.drain()
                self.huge_sent_whole += len(body) > HUGE
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def provider() -> AsyncIterator[tuple[HttpProvider, ErrorServer]]:
    errors = ErrorServer()
    server = await asyncio.start_server(errors.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = ProviderSettings.model_validate({"kind": "openai", "base_url": f"http://127.0.0.1:{port}/v1",
                                                "api_key": "sk-x"})
    up = HttpProvider("up", settings, OpenAIDialect())
    await up.start()
    try:
        yield up, errors
    finally:
        await up.aclose()
        server.close()


@pytest.mark.parametrize("stream", [False, True])
async def test_an_error_body_over_a_mib_is_not_read_on(provider: tuple[HttpProvider, ErrorServer],
                                                        stream: bool) -> None:
    up, errors = provider
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(2):  # the connection of a small error is reused; a huge one's is not read to its end
        with pytest.raises(UpstreamRejected) as info:
            if stream:
                await up.chat_stream(body, "small", timeout_s=10, include_usage=False)
            else:
                await up.chat(body, "small", timeout_s=10)
        assert (info.value.message, info.value.param, info.value.error_code) == ("bad value", "p", "c")
        with pytest.raises(UpstreamRejected) as info:
            if stream:
                await up.chat_stream(body, "huge", timeout_s=10, include_usage=False)
            else:
                await up.chat(body, "huge", timeout_s=10)
        assert info.value.message == "the provider answered HTTP 400"
    await asyncio.sleep(0.1)
    assert errors.huge_sent_whole == 0  # the gateway stopped reading (past what socket buffers hold)
