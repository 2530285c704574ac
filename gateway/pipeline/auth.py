"""auth: API key -> tenant, answered from memory; and the separate admin key."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway.errors import AuthenticationFailed, PermissionDenied
from gateway.pipeline.context import Call
from gateway.pipeline.stage import ModelRequest, Stage, StageResult
from gateway.store.keys import KeyCache, KeyRecord

if TYPE_CHECKING:
    from gateway.runtime import Gateway

_NO_KEY = ("You didn't provide an API key. You need to provide your API key in an Authorization header "
           "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")


def bearer_token(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _accept(record: KeyRecord | None, call: Call) -> KeyRecord:
    if record is None:
        # The key itself is never echoed: error bodies end up in client logs.
        raise AuthenticationFailed("Incorrect API key provided.")
    call.tenant, call.key_id = record.tenant, record.id
    return record


async def authenticate(headers: Mapping[str, str], keys: KeyCache, call: Call) -> KeyRecord:
    token = bearer_token(headers)
    if token is None:
        raise AuthenticationFailed(_NO_KEY)
    return _accept(keys.lookup(token) or await keys.lookup_or_refresh(token), call)


class Authenticate(Stage):
    """The tenant behind the key; a key the cache knows costs no coroutine."""

    name = "auth"
    per_route = False

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(gateway)
        self.keys = gateway.key_cache

    def before(self, req: ModelRequest) -> StageResult:
        token = bearer_token(req.headers)
        if token is None:
            raise AuthenticationFailed(_NO_KEY)
        record = self.keys.lookup(token)
        if record is None:
            return self._refresh(token, req.call)  # a key made since the cache's last refresh
        req.call.tenant, req.call.key_id = record.tenant, record.id
        return None

    async def _refresh(self, token: str, call: Call) -> None:
        _accept(await self.keys.lookup_or_refresh(token), call)


def check_admin(headers: Mapping[str, str], admin_key: str | None) -> None:
    if admin_key is None:
        # Deny by default: with no admin key configured the admin API does not exist.
        raise PermissionDenied("The admin API is disabled: set GATEWAY_ADMIN_KEY to enable it.")
    token = bearer_token(headers)
    if token is None or not hmac.compare_digest(token.encode(), admin_key.encode()):
        raise AuthenticationFailed("Incorrect admin key provided.")
