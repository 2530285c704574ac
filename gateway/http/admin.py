"""The admin API (keys); every endpoint requires the admin key, and none exists without one."""

from __future__ import annotations

from datetime import date
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.errors import CLIENT_VALUE_CHARS, BadRequest, NotFound, bounded
from gateway.http.ingress import CALL_KEY
from gateway.http.validation import parse_json_object
from gateway.pipeline.auth import check_admin
from gateway.reports.budgets import report_text
from gateway.runtime import Gateway
from gateway.store.keys import KeyRecord


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant: str = Field(min_length=1, max_length=128)
    name: str | None = Field(default=None, max_length=128)


def _key_json(rec: KeyRecord) -> dict[str, Any]:
    return {"id": rec.id, "tenant": rec.tenant, "name": rec.name, "prefix": rec.prefix,
            "created_at": rec.created_at, "revoked_at": rec.revoked_at}


def _admin(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    request.scope[CALL_KEY].kind = "admin"
    check_admin(request.headers, gw.settings.admin_key)
    return gw


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data, default=str), status_code=status, media_type="application/json")


async def list_keys(request: Request) -> Response:
    gw = _admin(request)
    tenant = request.query_params.get("tenant")
    records = await gw.keys.list(tenant=tenant, include_revoked=request.query_params.get("all") == "true")
    return _json({"object": "list", "data": [_key_json(r) for r in records]})


async def create_key(request: Request) -> Response:
    gw = _admin(request)
    try:
        payload = CreateKey.model_validate(parse_json_object(await request.body()))
    except ValidationError as e:
        err = e.errors()[0]
        raise BadRequest(f"Invalid '{'.'.join(map(str, err['loc']))}': {err['msg']}.",
                         param=".".join(map(str, err["loc"]))) from None
    if payload.tenant not in gw.settings.tenants:
        raise BadRequest(f"Unknown tenant '{payload.tenant}'.", param="tenant")
    record, secret = await gw.keys.create(payload.tenant, payload.name, actor="admin-api")
    await gw.key_cache.refresh()
    return _json({**_key_json(record), "key": secret}, status=201)


async def revoke_key(request: Request) -> Response:
    gw = _admin(request)
    record = await gw.keys.revoke(request.path_params["key_id"], actor="admin-api")
    if record is None:
        raise NotFound(f"No active key with id '{bounded(request.path_params['key_id'], CLIENT_VALUE_CHARS)}'.")
    await gw.key_cache.refresh()
    return _json(_key_json(record))


async def list_breakers(request: Request) -> Response:
    gw = _admin(request)
    return _json({"object": "list", "data": gw.breakers.snapshot(),
                  "bulkheads": [b.snapshot() for b in gw.bulkheads.values()]})


async def reset_breaker(request: Request) -> Response:
    gw = _admin(request)
    target = request.path_params["target"]
    if not gw.breakers.reset(target):
        raise NotFound(f"No breaker for target '{bounded(target, CLIENT_VALUE_CHARS)}' (targets are named "
                       "provider/model).")
    return _json(gw.breakers.get(target).snapshot())


async def cost_report(request: Request) -> Response:
    gw = _admin(request)
    q = request.query_params
    fmt = q.get("format", "json")
    if fmt not in ("json", "csv", "table"):
        raise BadRequest("format must be json, csv or table.", param="format")
    try:
        since = date.fromisoformat(q["since"]) if q.get("since") else None
        until = date.fromisoformat(q["until"]) if q.get("until") else None
        groups = [g for g in q.get("group_by", "tenant").split(",") if g]
        text = await report_text(gw.ledger, gw.settings, tenant=q.get("tenant"), since=since, until=until,
                                 group_by=groups, fmt=fmt)
    except ValueError as e:
        raise BadRequest(str(e), param="group_by" if "group" in str(e) else "since") from None
    media = {"json": "application/json", "csv": "text/csv; charset=utf-8", "table": "text/plain; charset=utf-8"}[fmt]
    return Response(text, media_type=media)


def routes() -> list[Route]:
    return [
        Route("/admin/reports/costs", cost_report, methods=["GET"]),
        Route("/admin/breakers", list_breakers, methods=["GET"]),
        Route("/admin/breakers/{target:path}/reset", reset_breaker, methods=["POST"]),
        Route("/admin/keys", list_keys, methods=["GET"]),
        Route("/admin/keys", create_key, methods=["POST"]),
        Route("/admin/keys/{key_id}", revoke_key, methods=["DELETE"]),
    ]
