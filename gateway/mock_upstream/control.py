"""The mock's state and its control plane (`/_mock/...`): the request log and runtime faults.

Tests and drills use it to see exactly what the gateway sent upstream (headers, body, which
fault was injected, what status went back) and to change the faults without a restart.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Scope

from gateway.mock_upstream.faults import FaultConfig, FaultInjector


class RequestLog:
    """The last `size` upstream requests, oldest first."""

    def __init__(self, size: int) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=size)
        self._seq = itertools.count(1)

    def start(self, scope: Scope) -> dict[str, Any]:
        """Record a request as it arrives; the handler fills in body, fault and status."""
        raw_query = scope.get("query_string", b"")
        entry: dict[str, Any] = {
            "seq": next(self._seq),
            "time": time.time(),
            "method": scope["method"],
            "path": scope["path"],
            "query": dict(parse_qsl(raw_query.decode("latin-1"), keep_blank_values=True)) if raw_query else {},
            "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
            "body": None,
            "fault": None,
            "status": None,
        }
        self._entries.append(entry)
        return entry

    def select(self, *, since: int = 0, path: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        out = [e for e in self._entries if e["seq"] > since and (path is None or e["path"] == path)]
        return out[-limit:] if limit else out

    def clear(self) -> int:
        n = len(self._entries)
        self._entries.clear()
        return n


@dataclass
class MockState:
    injector: FaultInjector
    dims: int = 64
    api_key: str | None = field(default=None, repr=False)
    log: RequestLog = field(default_factory=lambda: RequestLog(10_000))
    # Set when the server starts shutting down, so hung requests let go at once.
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    def set_faults(self, config: FaultConfig) -> None:
        # A new injector restarts the seeded sequence, so a drill can be replayed from here.
        self.injector = FaultInjector(config)


def _json(value: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(value), status_code=status, media_type="application/json")


def _state(request: Request) -> MockState:
    state: MockState = request.app.state.mock
    return state


def _int(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    return int(value) if value and value.isdigit() else None


async def get_requests(request: Request) -> Response:
    log = _state(request).log
    return _json(log.select(since=_int(request, "since") or 0, path=request.query_params.get("path"),
                            limit=_int(request, "limit")))


async def clear_requests(request: Request) -> Response:
    return _json({"cleared": _state(request).log.clear()})


async def get_faults(request: Request) -> Response:
    return _json(_state(request).injector.config.model_dump(mode="json"))


async def put_faults(request: Request) -> Response:
    """PUT replaces the whole config (missing fields take defaults); PATCH changes only the given fields."""
    state = _state(request)
    try:
        given = orjson.loads(await request.body())
        if not isinstance(given, dict):
            raise ValueError("the body must be a JSON object")
        if request.method == "PATCH":
            given = {**state.injector.config.model_dump(), **given}
        config = FaultConfig.model_validate(given)
    except ValidationError as exc:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors(include_url=False)]
        return _json({"error": "invalid fault config", "details": errors}, 400)
    except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
        return _json({"error": f"invalid fault config: {exc}"}, 400)
    state.set_faults(config)
    return _json(config.model_dump(mode="json"))


async def health(request: Request) -> Response:
    return _json({"status": "ok"})


routes = [
    Route("/_mock/requests", get_requests, methods=["GET"]),
    Route("/_mock/requests", clear_requests, methods=["DELETE"]),
    Route("/_mock/faults", get_faults, methods=["GET"]),
    Route("/_mock/faults", put_faults, methods=["PUT", "PATCH"]),
    Route("/_mock/health", health, methods=["GET"]),
]
