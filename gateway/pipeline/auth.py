"""auth: API key -> tenant, answered from memory; and the separate admin key."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from gateway.errors import AuthenticationFailed, PermissionDenied
from gateway.pipeline.context import Call
from gateway.store.keys import KeyCache, KeyRecord


def bearer_token(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def authenticate(headers: Mapping[str, str], keys: KeyCache, call: Call) -> KeyRecord:
    token = bearer_token(headers)
    if token is None:
        raise AuthenticationFailed(
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    record = keys.lookup(token) or await keys.lookup_or_refresh(token)
    if record is None:
        # The key itself is never echoed: error bodies end up in client logs.
        raise AuthenticationFailed("Incorrect API key provided.")
    call.tenant, call.key_id = record.tenant, record.id
    return record


def check_admin(headers: Mapping[str, str], admin_key: str | None) -> None:
    if admin_key is None:
        # Deny by default: with no admin key configured the admin API does not exist.
        raise PermissionDenied("The admin API is disabled: set GATEWAY_ADMIN_KEY to enable it.")
    token = bearer_token(headers)
    if token is None or not hmac.compare_digest(token.encode(), admin_key.encode()):
        raise AuthenticationFailed("Incorrect admin key provided.")
