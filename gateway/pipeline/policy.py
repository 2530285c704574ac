"""policy: the model name a client sends -> a route, whether this tenant may use it; and the
route's own caps on what a call may ask for."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from gateway.errors import CLIENT_VALUE_CHARS, ModelNotFound, PermissionDenied, bounded
from gateway.limits.completion import cap_completion
from gateway.pipeline.context import Call
from gateway.pipeline.stage import ModelRequest, Operation, Stage, StageResult
from gateway.settings import RouteSettings, Settings

if TYPE_CHECKING:
    from gateway.runtime import Gateway

_authz_log = logging.getLogger("gateway.authz")


def resolve_route(settings: Settings, call: Call, model: str) -> RouteSettings:
    route = settings.routes.get(model)
    if route is None:
        raise ModelNotFound(f"The model `{bounded(model, CLIENT_VALUE_CHARS)}` does not exist or you do not have "
                            "access to it.", param="model")
    tenant = settings.tenants.get(call.tenant or "")
    if tenant is None or not tenant.allows(model):
        _authz_log.warning("denied", extra={"fields": {
            "request_id": call.request_id, "subject": f"tenant:{call.tenant}", "key_id": call.key_id,
            "action": f"{call.kind}.create", "resource": f"route:{model}", "decision": "deny"}})
        raise PermissionDenied(f"Tenant '{call.tenant}' is not allowed to use the model `{model}`.", param="model")
    call.route = model
    return route


def allowed_routes(settings: Settings, tenant_name: str | None) -> list[str]:
    tenant = settings.tenants.get(tenant_name or "")
    if tenant is None:
        return []
    return [name for name in settings.routes if tenant.allows(name)]


def apply_route_caps(body: dict[str, Any], route: RouteSettings) -> None:
    """The route's max_tokens caps the completion (every completion field the body sets: a provider
    may read either), and is the default when the client sets none."""
    cap = route.max_tokens
    if cap is None:
        return
    cap_completion(body, cap)


class ResolveRoute(Stage):
    """The last stage before the route is known: the stages after it are built per route."""

    name = "policy"
    per_route = False

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(gateway)
        self.settings = gateway.settings

    def before(self, req: ModelRequest) -> StageResult:
        call = req.call
        req.route = resolve_route(self.settings, call, call.model_requested or "")
        return None


class RouteCaps(Stage):
    """The route's max_tokens, on a completion; not built where the route sets none."""

    name = "route_caps"

    @classmethod
    def build(cls, gateway: Gateway, route: RouteSettings | None, operation: Operation) -> Stage | None:
        if not operation.completes or route is None or route.max_tokens is None:
            return None
        return cls(gateway, route.max_tokens)

    def __init__(self, gateway: Gateway, cap: int) -> None:
        super().__init__(gateway)
        self.cap = cap

    def before(self, req: ModelRequest) -> StageResult:
        cap_completion(req.body, self.cap)
        return None
