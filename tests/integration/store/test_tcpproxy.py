import asyncio

import pytest

from tests.support.tcpproxy import TcpProxy


@pytest.fixture
async def echo_port():
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def _roundtrip(port: int, payload: bytes = b"ping") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.read(1024), 2)
    finally:
        writer.close()


async def test_forwards_cuts_and_restores(echo_port):
    async with TcpProxy("127.0.0.1", echo_port) as proxy:
        assert proxy.port and proxy.port != echo_port
        assert await _roundtrip(proxy.port) == b"ping"

        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"a")
        assert await reader.read(10) == b"a"
        await proxy.cut()
        # The open connection dies at once ...
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            data = await asyncio.wait_for(reader.read(10), 2)
            if not data:
                raise asyncio.IncompleteReadError(b"", 1)
        writer.close()
        # ... and new ones are closed as soon as they are accepted.
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            data = await _roundtrip(proxy.port)
            if not data:
                raise asyncio.IncompleteReadError(b"", 1)

        await proxy.restore()
        assert await _roundtrip(proxy.port, b"back") == b"back"
