"""admission: the tenant's in-flight cap (`tenants.<name>.max_in_flight`), so one tenant's flood
cannot take every slot of the gateway. Its slot is given back by a clean-up step."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.errors import ConcurrencyLimited
from gateway.pipeline.context import Call
from gateway.pipeline.stage import ModelRequest, Stage, StageResult
from gateway.resilience.backoff import retry_after_headers

if TYPE_CHECKING:
    from gateway.runtime import Gateway


class AdmitTenant(Stage):
    name = "admission"
    per_route = False

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(gateway)
        self.caps = gateway.tenant_caps
        self.metrics = gateway.metrics

    def before(self, req: ModelRequest) -> StageResult:
        call = req.call
        if self.caps.try_enter(call.tenant) != "ok":
            self.metrics.rejected.labels("tenant_in_flight").inc()
            raise ConcurrencyLimited(f"Tenant '{call.tenant}' has too many requests in flight; retry shortly.",
                                     headers=retry_after_headers(0.25))
        call.cleanups.append(self._leave)
        return None

    def _leave(self, call: Call, ending: str) -> None:
        self.caps.leave(call.tenant)
