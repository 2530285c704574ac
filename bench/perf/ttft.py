"""Time to first token: one kept-alive connection, raw HTTP/1.1, timed from sending the request to the arrival of
the first `data:` event of the stream.

A raw socket keeps the client's own cost (and its jitter) to microseconds, far below the ~1 ms being measured; a
full HTTP client would add more than that.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

_IO_TIMEOUT_S = 30.0


@dataclass
class TtftResult:
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float

    def as_dict(self) -> dict[str, float | int]:
        return {"requests": self.requests, "errors": self.errors, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list; 0 for an empty one."""
    if not sorted_values:
        return 0.0
    return sorted_values[max(0, math.ceil(q / 100 * len(sorted_values)) - 1)]


def measure(url: str, body: dict[str, object], headers: dict[str, str], requests: int, warmup: int) -> TtftResult:
    return asyncio.run(_measure(url, body, headers, requests, warmup))


async def _measure(url: str, body: dict[str, object], headers: dict[str, str], requests: int,
                   warmup: int) -> TtftResult:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = _request(host, port, parts.path, body, headers)
    reader, writer = await asyncio.open_connection(host, port)
    samples: list[float] = []
    errors = 0
    try:
        for i in range(warmup + requests):
            try:
                ttft = await asyncio.wait_for(_one(reader, writer, request), _IO_TIMEOUT_S)
            except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError):
                # A broken connection is counted and replaced, so one error does not end the measurement.
                errors += i >= warmup
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            if ttft is None:
                errors += i >= warmup
            elif i >= warmup:
                samples.append(ttft)
    finally:
        writer.close()
    samples.sort()
    return TtftResult(len(samples), errors, percentile(samples, 50), percentile(samples, 99))


def _request(host: str, port: int, path: str, body: dict[str, object], headers: dict[str, str]) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
             "Accept: text/event-stream", f"Content-Length: {len(payload)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> float | None:
    """Send one request and read its whole answer; the TTFT in ms, or None for a non-200 or a stream without one."""
    start = time.perf_counter()
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    fields = _headers(head)
    first: float | None = None
    tail = b""  # the last bytes seen, so a marker split across two pieces is still found
    done = False
    async for piece in _body(reader, fields):
        window = tail + piece
        if first is None and b"data:" in window:
            first = time.perf_counter()
        done = done or b"[DONE]" in window
        tail = window[-8:]
    if "close" in fields.get("connection", ""):
        raise ValueError("server closed the connection")
    if status != 200 or first is None or not done:
        return None
    return (first - start) * 1000


def _headers(head: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name:
            out[name.strip().lower()] = value.strip().lower()
    return out


async def _body(reader: asyncio.StreamReader, fields: dict[str, str]) -> AsyncIterator[bytes]:
    """The body's pieces as they arrive, chunked or with a Content-Length (both keep the connection usable)."""
    if "chunked" in fields.get("transfer-encoding", ""):
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers are sent; this is the final CRLF
                return
            yield (await reader.readexactly(size + 2))[:-2]
    else:
        left = int(fields.get("content-length", "0"))
        while left > 0:
            piece = await reader.read(min(left, 65536))
            if not piece:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(piece)
            yield piece
