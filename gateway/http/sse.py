"""A server-sent-events response over an async generator of ready-made `data:` payloads.

When the client leaves, the ingress cancels the request's task; the `finally` here then closes
the source at once, which closes the upstream connection, so a provider does not keep
generating (and billing) for nobody. The accounting that must not hold the stream open runs
in the call's clean-up steps, once the response is over (gateway/pipeline/cleanup.py).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from starlette.types import Receive, Scope, Send

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class SSEResponse:
    def __init__(self, source: AsyncGenerator[bytes, None], headers: list[tuple[bytes, bytes]]) -> None:
        self.source = source
        self.headers = SSE_HEADERS + headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.headers})
            async for payload in self.source:
                await send({"type": "http.response.body", "body": b"data: " + payload + b"\n\n", "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await self.source.aclose()
