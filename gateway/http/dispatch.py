"""The model endpoints' own lean path: exact-path dispatch to handlers that answer in plain ASGI.

Every request a tenant's application makes goes through here, so it skips what Starlette adds per
request (route regexes, `Request`/`Response` objects, two layers of exception wrappers); errors
still leave through the ingress's one mapping. Anything else (models list, admin, operations, 404s)
goes on to the Starlette app.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import CLIENT_VALUE_CHARS, MethodNotAllowed
from gateway.http.ingress import CALL_KEY
from gateway.pipeline.context import Call
from gateway.runtime import Gateway

Reply = Callable[[Scope, Receive, Send], Awaitable[None]]


class RawHeaders(Mapping[str, str]):
    """The request's headers as a read-only mapping over the ASGI list (names arrive lower-case).

    A model call reads two or three of the dozen headers an SDK sends, so nothing is decoded
    until asked for. The first of repeated headers wins, as in Starlette's Headers.get."""

    __slots__ = ("_raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw

    def __getitem__(self, name: str) -> str:
        key = name.lower().encode("latin-1")
        for k, v in self._raw:
            if k == key:
                return v.decode("latin-1")
        raise KeyError(name)

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        key = name.lower().encode("latin-1")
        for k, v in self._raw:
            if k == key:
                return v.decode("latin-1")
        return default

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for k, _ in self._raw:
            name = k.decode("latin-1")
            if name not in seen:
                seen.add(name)
                yield name

    def __len__(self) -> int:
        return len({k for k, _ in self._raw})


class Inbound:
    """What a model endpoint needs of its request: headers (lower-case names), the body, the Call."""

    __slots__ = ("_receive", "call", "gateway", "headers")

    def __init__(self, scope: Scope, receive: Receive, gateway: Gateway) -> None:
        self.headers = RawHeaders(scope["headers"])
        self.call: Call = scope[CALL_KEY]
        self.gateway = gateway
        self._receive = receive

    async def body(self) -> bytes:
        message = await self._receive()
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            return body
        parts = [body]
        while message.get("more_body", False):
            message = await self._receive()
            parts.append(message.get("body", b""))
        return b"".join(parts)


Handler = Callable[[Inbound], Awaitable[Reply]]


class JSONReply:
    """A JSON answer; `after` runs once its last byte is sent (settlement), still inside the request,
    and also when sending is cut short (the client left): the call was served all the same."""

    __slots__ = ("after", "body", "headers", "status")

    def __init__(self, body: bytes, headers: list[tuple[bytes, bytes]] | None = None, *, status: int = 200,
                 after: Callable[[], Awaitable[None]] | None = None) -> None:
        self.body, self.status, self.after = body, status, after
        self.headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                        *(headers or ())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.after is None:
            await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
            await send({"type": "http.response.body", "body": self.body})
            return
        try:
            await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
            await send({"type": "http.response.body", "body": self.body})
        finally:
            await self.after()


class Dispatcher:
    def __init__(self, gateway: Gateway, routes: Mapping[str, Handler], fallback: ASGIApp) -> None:
        self.gateway = gateway
        self.routes = routes
        self.fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if handler is None:
            await self.fallback(scope, receive, send)
            return
        if scope["method"] != "POST":
            raise MethodNotAllowed(f"Method {scope['method'][:CLIENT_VALUE_CHARS]} is not allowed on {scope['path']}.")
        reply = await handler(Inbound(scope, receive, self.gateway))
        await reply(scope, receive, send)
