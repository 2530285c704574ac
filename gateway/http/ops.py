"""Operations endpoints: liveness and readiness."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.observability.metrics import CONTENT_TYPE


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def metrics(request: Request) -> Response:
    gw = request.app.state.gateway
    gw.metrics.log_dropped.set(gw.log_dropped())
    return Response(gw.metrics.render(), media_type=CONTENT_TYPE)


async def readyz(request: Request) -> Response:
    gw = request.app.state.gateway
    ledger_ok = await gw.ledger.ping(timeout_s=1.0)
    state_ok = await gw.state.ping()
    checks = {"ledger": "ok" if ledger_ok else "unreachable", "state": "ok" if state_ok else "unreachable"}
    if ledger_ok and state_ok:
        return Response(orjson.dumps({"status": "ready", "checks": checks}), media_type="application/json")
    return Response(orjson.dumps({"status": "unready", "checks": checks}), status_code=503,
                    media_type="application/json", headers={"retry-after": "1"})
