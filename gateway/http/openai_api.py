"""The OpenAI surface's models endpoints (ordinary Starlette routes).

The model calls themselves (chat completions, embeddings) are paths of the dispatcher's lean path
(gateway/http/dispatch.py), each naming the operation the pipeline runs (gateway/pipeline/model_call.py).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.http.ingress import CALL_KEY
from gateway.pipeline.auth import authenticate
from gateway.pipeline.context import Call
from gateway.pipeline.model_call import CHAT, EMBEDDINGS
from gateway.pipeline.policy import allowed_routes, resolve_route
from gateway.pipeline.stage import Operation
from gateway.runtime import Gateway

# The model calls: path -> the operation the pipeline runs for it.
MODEL_CALLS: dict[str, Operation] = {"/v1/chat/completions": CHAT, "/v1/embeddings": EMBEDDINGS}


def _gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def _call(request: Request) -> Call:
    call: Call = request.scope[CALL_KEY]
    return call


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


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
