"""The mock upstream as an ASGI app: OpenAI, Azure OpenAI and Anthropic endpoints with faults.

Every provider request goes through one path: log it, check the key, parse and validate the
body, decide the fault, wait the latency, then answer (or misbehave) in that provider's shape.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any, Literal

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.mock_upstream import control, validation
from gateway.mock_upstream.answers import (
    anthropic_events,
    anthropic_message,
    chat_chunks,
    chat_completion,
    embeddings_response,
)
from gateway.mock_upstream.control import MockState, RequestLog
from gateway.mock_upstream.core import Refused, encoded_body
from gateway.mock_upstream.faults import DirectiveError, Fault, FaultConfig, FaultInjector
from gateway.mock_upstream.shapes import Api, error_event, error_response, mask_key
from gateway.mock_upstream.transport import EventStreamResponse, GoneResponse, ResetResponse, hang

Kind = Literal["chat", "embeddings", "messages"]
MODELS = ("gpt-4o", "gpt-4o-mini", "text-embedding-3-small", "claude-sonnet-4-5", "claude-haiku-4-5")
_BAD_JSON = {
    "openai": "We could not parse the JSON body of your request. The OpenAI API expects a JSON payload.",
    "azure": "We could not parse the JSON body of your request.",
    "anthropic": "There was an error parsing the body of your request.",
}


class _Problem(Exception):
    """A request the provider would refuse; carries the error response's parts."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _bearer(headers: Mapping[str, str]) -> str:
    auth = headers.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else ""


def _check_key(api: Api, headers: Mapping[str, str], key: str | None) -> None:
    if key is None:
        return
    if api == "openai":
        given = _bearer(headers)
        if not given:
            raise _Problem(401, "You didn't provide an API key. You need to provide your API key in an "
                                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise _Problem(401, f"Incorrect API key provided: {mask_key(given)}. You can find your API key at "
                                "https://platform.openai.com/account/api-keys.", code="invalid_api_key")
    elif api == "azure":
        if not hmac.compare_digest(headers.get("api-key", "").encode(), key.encode()):
            raise _Problem(401, "Access denied due to invalid subscription key or wrong API endpoint. Make sure "
                                "to provide a valid key for an active subscription and use a correct regional "
                                "API endpoint for your resource.", code="401")
    else:
        # Recent Anthropic SDKs send the key as a bearer token; the API takes both.
        sent = headers.get("x-api-key", "") or _bearer(headers)
        if not sent:
            raise _Problem(401, "x-api-key header is required")
        if not hmac.compare_digest(sent.encode(), key.encode()):
            raise _Problem(401, "invalid x-api-key")


def _validate(api: Api, kind: Kind, body: dict[str, Any], headers: Mapping[str, str]) -> None:
    if api == "anthropic":
        if "anthropic-version" not in headers:
            raise _Problem(400, "anthropic-version: header is required")
        validation.check_anthropic_messages(body)
    elif kind == "chat":
        validation.check_openai_chat(body, model_in_path=api == "azure")
    else:
        validation.check_openai_embeddings(body, model_in_path=api == "azure")


def _sse(api: Api, events: list[bytes], tail: bytes, fault: Fault, headers: dict[str, str]) -> Response:
    delay = fault.chunk_delay_ms / 1000
    if fault.kind == "error_event":
        events = events[: fault.cut_after or 0]
        tail = error_event(api, fault.message, param=fault.param, code=fault.code)
    if fault.kind == "malformed":
        # The second event's JSON stops half-way; the stream then ends normally.
        events = [*events[:1], events[1][: len(events[1]) // 2] + b"\n\n"] if len(events) > 1 else [b"data: {\n\n"]
    cut = fault.cut_after if fault.kind == "cut" else None
    return EventStreamResponse(events, tail, cut_after=cut, delay_s=delay, headers=headers)


def _pretty(obj: Any) -> bytes:
    """JSON as Jackson's default pretty printer writes it: `"key" : value`, one key a line."""
    return json.dumps(obj, indent=2, separators=(",", " : "), ensure_ascii=False).encode()


def _data(payload: bytes) -> bytes:
    """An SSE `data:` field; a payload of several lines takes one `data:` line each."""
    return b"".join(b"data: " + line + b"\n" for line in payload.split(b"\n"))


def _answer(api: Api, kind: Kind, body: dict[str, Any], model: str, dims: int, fault: Fault,
            headers: dict[str, str]) -> Response:
    dumps = _pretty if fault.pretty else orjson.dumps
    stream = body.get("stream") is True and kind != "embeddings"
    if stream and kind == "messages":
        encoded = [b"event: " + name.encode() + b"\n" + _data(dumps(data)) + b"\n"
                   for name, data in anthropic_events(body, model=model)]
        return _sse(api, encoded[:-1], encoded[-1], fault, headers)
    if stream:
        options = body.get("stream_options")
        usage = isinstance(options, dict) and options.get("include_usage") is True
        chunks = [_data(dumps(c)) + b"\n" for c in chat_chunks(body, model=model, include_usage=usage)]
        return _sse(api, chunks, b"data: [DONE]\n\n", fault, headers)
    if kind == "messages":
        raw = dumps(anthropic_message(body, model=model))
    elif kind == "chat":
        raw = dumps(chat_completion(body, model=model))
    else:
        raw = dumps(embeddings_response(body, model=model, dims=dims))
    if fault.kind == "malformed":
        raw = raw[: len(raw) // 2]
    return Response(raw, headers=headers, media_type="application/json")


async def _serve(request: Request, api: Api, kind: Kind, model: str | None = None) -> Response:
    state: MockState = request.app.state.mock
    entry = state.log.start(request.scope)
    request_id = f"req_mock{entry['seq']:012d}"
    try:
        response = await _handle(request, state, entry, api, kind, model, request_id)
    except _Problem as p:
        response = error_response(api, p.status, p.message, param=p.param, code=p.code, request_id=request_id)
    entry["status"] = response.status_code or None
    return response


async def _handle(request: Request, state: MockState, entry: dict[str, Any], api: Api, kind: Kind,
                  model: str | None, request_id: str) -> Response:
    _check_key(api, request.headers, state.api_key)
    if api == "azure" and not request.query_params.get("api-version"):
        raise _Problem(400, "Missing required query parameter: api-version", param="api-version",
                       code="MissingApiVersionParameter")
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise _Problem(400, _BAD_JSON[api]) from None
    if not isinstance(body, dict):
        raise _Problem(400, _BAD_JSON[api])
    try:
        encoded_body(body)  # one too deep to encode again could be neither answered nor shown in the log
        entry["body"] = body
        _validate(api, kind, body, request.headers)
    except Refused as exc:
        raise _Problem(400, exc.message, param=exc.param, code=exc.code) from None
    try:
        fault = state.injector.decide(request.headers, body, stream=body.get("stream") is True)
    except DirectiveError as exc:
        raise _Problem(400, f"mock: {exc}") from None
    entry["fault"] = fault.describe()
    if fault.latency_ms:
        await asyncio.sleep(fault.latency_ms / 1000)
    if fault.kind == "reset":
        return ResetResponse()
    if fault.kind == "hang":
        if await hang(request.receive, state.closing):
            return GoneResponse()
        raise _Problem(504, "mock: hang ended without the client giving up")
    if fault.kind == "status" and fault.status is not None:
        return error_response(api, fault.status, fault.message, param=fault.param, code=fault.code,
                              retry_after_s=fault.retry_after_s, request_id=request_id)
    headers = {"request-id" if api == "anthropic" else "x-request-id": request_id}
    try:
        served = fault.model if fault.model is not None else model or str(body.get("model", ""))
        return _answer(api, kind, body, served, state.dims, fault, headers)
    except Refused as exc:
        raise _Problem(400, exc.message, param=exc.param, code=exc.code) from None
    except ValueError as exc:  # an embeddings input OpenAI would reject
        raise _Problem(400, str(exc), param="input") from None


async def openai_chat(request: Request) -> Response:
    return await _serve(request, "openai", "chat")


async def openai_embeddings(request: Request) -> Response:
    return await _serve(request, "openai", "embeddings")


async def azure_chat(request: Request) -> Response:
    return await _serve(request, "azure", "chat", request.path_params["deployment"])


async def azure_embeddings(request: Request) -> Response:
    return await _serve(request, "azure", "embeddings", request.path_params["deployment"])


async def anthropic_messages(request: Request) -> Response:
    return await _serve(request, "anthropic", "messages")


async def list_models(request: Request) -> Response:
    """OpenAI's model list, or Anthropic's when the client speaks Anthropic (it sends anthropic-version)."""
    if "anthropic-version" in request.headers:
        data: list[dict[str, Any]] = [
            {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
            for m in MODELS if m.startswith("claude")
        ]
        page = {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
        return Response(orjson.dumps(page), media_type="application/json")
    now = int(time.time())
    models = {"object": "list", "data": [{"id": m, "object": "model", "created": now, "owned_by": "mock"}
                                         for m in MODELS]}
    return Response(orjson.dumps(models), media_type="application/json")


def create_mock_app(faults: FaultConfig, *, dims: int = 64, api_key: str | None = None,
                    log_size: int = 10_000) -> Starlette:
    routes = [
        Route("/v1/chat/completions", openai_chat, methods=["POST"]),
        Route("/v1/embeddings", openai_embeddings, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/messages", anthropic_messages, methods=["POST"]),
        Route("/openai/deployments/{deployment}/chat/completions", azure_chat, methods=["POST"]),
        Route("/openai/deployments/{deployment}/embeddings", azure_embeddings, methods=["POST"]),
        *control.routes,
    ]
    app = Starlette(routes=routes)
    app.state.mock = MockState(FaultInjector(faults), dims=dims, api_key=api_key, log=RequestLog(log_size))
    return app
