"""The OpenAI surface: thin endpoints that parse, run the pipeline, and answer JSON or SSE.

Chat and embeddings run on the dispatcher's lean path (`Inbound` in, an ASGI reply out); the
models endpoints are ordinary Starlette routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from functools import partial
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import ConcurrencyLimited, GatewayError, InternalError
from gateway.http.dispatch import Inbound, JSONReply
from gateway.http.ingress import CALL_KEY
from gateway.http.sse import SSEResponse
from gateway.http.validation import parse_json_object, validate_chat, validate_embeddings
from gateway.limits.stage import Hold
from gateway.limits.tokens import count_messages
from gateway.pipeline.auth import authenticate
from gateway.pipeline.context import Call
from gateway.pipeline.policy import allowed_routes, apply_route_caps, resolve_route
from gateway.providers.base import ChatStream, Usage
from gateway.resilience.backoff import retry_after_headers
from gateway.runtime import Gateway

_log = logging.getLogger("gateway.stream")

# How long a stream whose client left after the finish reason still reads the upstream for its
# usage chunk (OpenAI sends it right after the finish): the provider bills those tokens anyway, and
# with the usage the record is exact rather than the whole reservation.
USAGE_LINGER_S = 2.0


def _gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def _call(request: Request) -> Call:
    call: Call = request.scope[CALL_KEY]
    return call


def _answer(gw: Gateway, body: bytes, hold: Hold | None, usage: Usage, call: Call) -> JSONReply:
    """Settlement runs right after the answer is sent, still inside the request (the ingress waits for
    it before the request counts as over), so it costs the client no latency and is never dropped."""
    if hold is None:
        return JSONReply(body, _route_headers(call))
    return JSONReply(body, _route_headers(call),
                     after=partial(gw.limits.settle, hold, usage, call.provider, call.target_model, call))


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


def _route_headers(call: Call) -> list[tuple[bytes, bytes]]:
    return [
        (b"x-gateway-route", (call.route or "").encode()),
        (b"x-gateway-provider", (call.provider or "").encode()),
        (b"x-gateway-attempts", b"%d" % call.attempt_count),
        *call.extra_headers,
    ]


async def _begin(inbound: Inbound, kind: str) -> tuple[Gateway, Call, dict[str, Any]]:
    """ingress -> auth -> body: the steps every model call shares."""
    gw, call = inbound.gateway, inbound.call
    call.kind = kind
    await authenticate(inbound.headers, gw.key_cache, call)
    _admit_tenant(gw, call)
    feature = inbound.headers.get("x-gateway-feature")
    if feature:
        call.feature = feature[:128]
    raw = await inbound.body()
    body = parse_json_object(raw)
    call.body_bytes = len(raw)
    if gw.settings.storage.envelope_bodies != "none":
        call.request_body = raw.decode("utf-8", "replace")
    return gw, call, body


def _admit_tenant(gw: Gateway, call: Call) -> None:
    tenant = call.tenant
    if gw.tenant_caps.try_enter(tenant) != "ok":
        gw.metrics.rejected.labels("tenant_in_flight").inc()
        raise ConcurrencyLimited(f"Tenant '{tenant}' has too many requests in flight; retry shortly.",
                                 headers=retry_after_headers(0.25))
    call.deferred.append(lambda: gw.tenant_caps.leave(tenant))


async def chat_completions(inbound: Inbound) -> JSONReply | SSEResponse:
    gw, call, body = await _begin(inbound, "chat")
    call.model_requested = validate_chat(body)
    route = resolve_route(gw.settings, call, call.model_requested)
    apply_route_caps(body, route)
    hold = await gw.limits.reserve(call, route, body)
    again = None if hold is None else partial(gw.limits.again, hold)
    stream_mode = bool(body.get("stream"))
    try:
        if not stream_mode:
            result = await gw.router.chat(call, route, body, again)
        else:
            call.stream = True
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            stream = await gw.router.chat_stream(call, route, body, include_usage, again)
    except asyncio.CancelledError:
        await _cut_short(gw, call, hold)
        raise
    except BaseException:
        # No attempt succeeded: providers do not bill failed calls, so nothing was spent, unless an
        # attempt timed out while its provider worked (see Limits.fail).
        await gw.limits.fail(hold, call)
        raise
    if not stream_mode:
        call.usage, call.model_served, call.finish_reason = result.usage, result.served_model, result.finish_reason
        if gw.settings.storage.envelope_bodies == "all":
            call.response_body = result.body.decode("utf-8", "replace")
        return _answer(gw, result.body, hold, result.usage, call)
    relay = _Relay(gw, stream, call, body, hold)
    return SSEResponse(relay.events(), _route_headers(call), after=relay.finish)


async def _cut_short(gw: Gateway, call: Call, hold: Hold | None) -> None:
    """The client left while a provider was working on its call. The provider may bill what it
    generated, so the reservation stands as spent, recorded against the target being called (with
    no budget, the prompt estimate is the record). Between attempts nothing is being billed."""
    attempt = call.attempts[-1] if call.attempts else None
    if attempt is None or attempt.skipped or attempt.error != "Cancelled":
        await gw.limits.fail(hold, call)  # (what earlier attempts that timed out reserved is spent)
        return
    call.provider, call.target_model = attempt.provider, attempt.model
    call.usage = Usage(prompt_tokens=call.prompt_estimate or 0)
    await gw.limits.settle(hold, None, call.provider, call.target_model, call)


class _Relay:
    """One stream's relay: `events()` while the response is open, `finish()` once it is over.

    The accounting (usage, settlement) runs in `finish()`, after the response's last byte: a
    client that closes its connection on `[DONE]` must not cut it short."""

    def __init__(self, gw: Gateway, stream: ChatStream, call: Call, body: dict[str, Any], hold: Hold | None):
        self.gw, self.stream, self.call, self.body, self.hold = gw, stream, call, body, hold
        self.completed = False
        self.relayed = 0  # chunks sent on

    async def events(self) -> AsyncGenerator[bytes, None]:
        """Chunks as they arrive, then `[DONE]`; after the first byte, a failure is reported in-band
        as one OpenAI-style error event, and the stream ends without `[DONE]`.

        Once the finish reason has been relayed, only the usage is still to come: a client that
        leaves then does not stop the stream at once (`Call.linger_s`), so the usage is read."""
        call = self.call
        translator = self.stream.translator
        try:
            async for payload in self.stream.chunks:
                if call.ttft_ms is None:
                    call.ttft_ms = call.elapsed_ms()
                self.relayed += 1
                if translator.finish_reason is not None and not call.linger_s and not translator.usage.reported:
                    call.linger_s = USAGE_LINGER_S
                yield payload
            self.completed = True
            yield b"[DONE]"
        except GatewayError as exc:
            call.error_type, call.error_code = type(exc).__name__, exc.error_code
            yield _stream_error(exc)
        except Exception:
            _log.exception("stream relay failed", extra={"fields": {"request_id": call.request_id}})
            internal = InternalError("The gateway failed while relaying the stream.")
            call.error_type, call.error_code = type(internal).__name__, internal.error_code
            yield _stream_error(internal)

    async def finish(self) -> None:
        """Settle first, then close the upstream: the settlement starts before anything here waits,
        so no cancellation can leave the hold unsettled (and refreshed for ever)."""
        call, stream = self.call, self.stream
        try:
            if not self.completed and call.error_type is None:
                call.client_disconnected = True
            call.model_served = stream.translator.served_model
            call.finish_reason = stream.translator.finish_reason
            # Usage counts as reported only once the stream finished: Anthropic reports the prompt at
            # the start and the completion with the finish, so a stream cut before has a partial count.
            usage = stream.usage if stream.usage.reported and call.finish_reason is not None else None
            call.usage = usage or self._estimate()
            # A stream cut short (client gone, provider broken) may have been billed for what it
            # generated; unless the provider reported usage, the reservation stands as spent (and is
            # what the envelope records).
            await self.gw.limits.settle(self.hold, usage, call.provider, call.target_model, call)
        finally:
            await stream.aclose()

    def _estimate(self) -> Usage:
        """No usage reported (and no reservation to stand for it): the prompt estimate, and a token
        for every chunk relayed (OpenAI streams about one token a chunk; the role and finish chunks
        make it an overestimate by two at most)."""
        prompt = self.call.prompt_estimate
        if prompt is None:
            prompt = count_messages(self.body.get("messages") or (), self.call.target_model or "gpt-4o")
        return Usage(prompt_tokens=prompt, completion_tokens=self.relayed, reported=False)


def _stream_error(exc: GatewayError) -> bytes:
    return orjson.dumps({"error": {"message": exc.message, "type": exc.type, "param": exc.param,
                                   "code": exc.error_code}})


async def embeddings(inbound: Inbound) -> JSONReply:
    gw, call, body = await _begin(inbound, "embeddings")
    call.model_requested = validate_embeddings(body)
    route = resolve_route(gw.settings, call, call.model_requested)
    hold = await gw.limits.reserve(call, route, body)
    try:
        result = await gw.router.embeddings(call, route, body, None if hold is None else partial(gw.limits.again, hold))
    except asyncio.CancelledError:
        await _cut_short(gw, call, hold)
        raise
    except BaseException:
        await gw.limits.fail(hold, call)
        raise
    call.usage, call.model_served = result.usage, result.served_model
    return _answer(gw, result.body, hold, result.usage, call)


def _model_object(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "gateway"}


async def list_models(request: Request) -> Response:
    gw, call = _gateway(request), _call(request)
    call.kind = "models"
    await authenticate(request.headers, gw.key_cache, call)
    data = [_model_object(name, gw.started_at) for name in allowed_routes(gw.settings, call.tenant)]
    return _json(orjson.dumps({"object": "list", "data": data}))


async def retrieve_model(request: Request) -> Response:
    gw, call = _gateway(request), _call(request)
    call.kind = "models"
    await authenticate(request.headers, gw.key_cache, call)
    name = request.path_params["model"]
    resolve_route(gw.settings, call, name)
    return _json(orjson.dumps(_model_object(name, gw.started_at)))
