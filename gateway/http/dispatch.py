"""The model endpoints: exact-path dispatch of a POST to the model-call pipeline, answered in plain ASGI.

An endpoint is a path and the operation it runs (chat, embeddings): inbound in, the pipeline
(gateway/pipeline/model_call.py), a JSON or SSE reply out. Every request a tenant's application
makes goes through here, so it skips what Starlette adds per request (route regexes,
`Request`/`Response` objects, two layers of exception wrappers); errors still leave through the
ingress's one mapping. Anything else (models list, admin, operations, 404s) goes on to the
Starlette app.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import CLIENT_VALUE_CHARS, MethodNotAllowed
from gateway.http.ingress import CALL_KEY
from gateway.pipeline.context import Call
from gateway.pipeline.stage import Operation
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


class Dispatcher:
    def __init__(self, gateway: Gateway, routes: Mapping[str, Operation], fallback: ASGIApp) -> None:
        self.gateway = gateway
        self.routes = routes
        self.fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        operation = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if operation is None:
            await self.fallback(scope, receive, send)
            return
        if scope["method"] != "POST":
            raise MethodNotAllowed(f"Method {scope['method'][:CLIENT_VALUE_CHARS]} is not allowed on {scope['path']}.")
        reply = await self.gateway.model_calls.run(Inbound(scope, receive, self.gateway), operation)
        await reply(scope, receive, send)
