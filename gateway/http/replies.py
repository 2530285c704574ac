"""A whole JSON answer as a plain ASGI reply (the model endpoints' lean path: no Starlette Response)."""

from __future__ import annotations

from starlette.types import Receive, Scope, Send


class JSONReply:
    """A JSON answer. What the call took is given back by its clean-up steps once the request is over
    (gateway/pipeline/cleanup.py), however sending ends."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, body: bytes, headers: list[tuple[bytes, bytes]] | None = None, *, status: int = 200) -> None:
        self.body, self.status = body, status
        self.headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                        *(headers or ())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})
