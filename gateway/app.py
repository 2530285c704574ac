"""create_app(settings): routes, the ingress boundary, and the lifespan that owns every client."""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from gateway.errors import (
    CLIENT_VALUE_CHARS,
    GatewayError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    bounded,
    error_response_parts,
)
from gateway.http import admin, openai_api, ops
from gateway.http.dispatch import Dispatcher
from gateway.http.ingress import CALL_KEY, IngressMiddleware
from gateway.limits.estimate import encodings_needed
from gateway.limits.tokens import preload
from gateway.malloc import limit_arenas
from gateway.observability.logging import LogPipeline
from gateway.runtime import Gateway
from gateway.settings import Settings, config_path_from, load_settings


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    call = request.scope[CALL_KEY]
    call.error_type, call.error_code = type(exc).__name__, exc.error_code
    status, body, headers = error_response_parts(exc, call.request_id)
    headers += [(k, v) for k, v in call.extra_headers if k.decode() not in exc.headers]
    response = Response(body, status_code=status)
    response.raw_headers = [h for h in headers if h[0] != b"x-request-id"]  # ingress adds it to every response
    response.raw_headers.append((b"content-length", str(len(body)).encode()))
    return response


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    # The method and path are the client's: quoted within a bound.
    method, path = request.method[:CLIENT_VALUE_CHARS], bounded(request.url.path, CLIENT_VALUE_CHARS)
    if exc.status_code == 405:
        return await _gateway_error(request, MethodNotAllowed(f"Method {method} is not allowed on {path}."))
    if exc.status_code == 404:
        return await _gateway_error(request, NotFound(f"Unknown request URL: {method} {path}."))
    return await _gateway_error(request, GatewayError(str(exc.detail)))


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Starlette re-raises after this response is sent; the ingress logs the traceback.
    return await _gateway_error(request, InternalError("The gateway failed to process the request."))


def create_app(settings: Settings, *, configure_logging: bool = True) -> ASGIApp:
    gateway = Gateway.build(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        limit_arenas()  # before any thread starts (the log writer's is next)
        logs = LogPipeline(settings.server.log_level, settings.server.log_queue_size) if configure_logging else None
        if logs:
            logs.install()
            gateway.log_pipeline = logs
            gateway.access_log.attach(logs)
        preload(encodings_needed((settings.providers[t.provider].kind, t.model)
                                 for route in settings.routes.values() for t in route.targets))
        await gateway.start()
        app.state.gateway = gateway
        # Everything built at start-up lives as long as the process: out of the collector's sight,
        # a full collection walks only what requests allocate (shorter pauses, fewer copied pages).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await gateway.aclose()
            if logs:
                logs.stop()

    routes = [
        Route("/v1/models", openai_api.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", openai_api.retrieve_model, methods=["GET"]),
        Route("/healthz", ops.healthz, methods=["GET"]),
        Route("/readyz", ops.readyz, methods=["GET"]),
        Route("/metrics", ops.metrics, methods=["GET"]),
        *admin.routes(),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        GatewayError: _gateway_error, HTTPException: _http_exception, Exception: _unexpected})
    return IngressMiddleware(Dispatcher(gateway, openai_api.MODEL_CALLS, app), gateway)


def app_from_env() -> ASGIApp:
    """Factory for `uvicorn --factory` and for multi-worker serving: config from $GATEWAY_CONFIG."""
    return create_app(load_settings(config_path_from(None, os.environ)))
