"""Prometheus metrics, one registry per running gateway (no process-global state).

Label values are bounded: routes, providers and targets come from the config, statuses and
reasons from fixed sets; tenants are config-declared too. Nothing request-specific is a label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.observability.loop_metrics import LoopCounter, LoopHistogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BREAKER_STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # What every request records: plain numbers on the event loop (see loop_metrics.py).
        self.requests = LoopCounter("gateway_requests", "Model requests answered, by route and status class.",
                                    ["route", "tenant", "status"])
        self.latency = LoopHistogram("gateway_request_duration_seconds", "Time to the full answer, by route.",
                                     ["route"], _LATENCY_BUCKETS)
        self.attempts = LoopCounter("gateway_upstream_attempts", "Upstream attempts by target and outcome.",
                                    ["provider", "model", "outcome"])
        self.tokens = LoopCounter("gateway_tokens", "Tokens served, by route and kind.", ["route", "kind"])
        self.estimate_gap = LoopHistogram("gateway_token_estimate_gap_ratio",
                                          "(reported - estimated) / estimated prompt tokens, by provider.",
                                          ["provider"], (-0.5, -0.2, -0.1, -0.05, -0.01, 0, 0.01, 0.05, 0.1, 0.2, 0.5))
        for collector in (self.requests, self.latency, self.attempts, self.tokens, self.estimate_gap):
            r.register(collector)
        self.rejected = Counter("gateway_rejected", "Requests shed before any upstream call, by reason.",
                                ["reason"], registry=r)
        self.breaker_transitions = Counter("gateway_breaker_transitions", "Circuit breaker transitions.",
                                           ["target", "to_state"], registry=r)
        self.breaker_state = Gauge("gateway_breaker_state", "Breaker state: 0 closed, 1 half-open, 2 open.",
                                   ["target"], registry=r)
        # A tenant's own breaker on a shared target: only that tenant is shed while it is open.
        self.tenant_breaker_transitions = Counter(
            "gateway_tenant_breaker_transitions", "Transitions of a tenant's own breaker on a shared target.",
            ["target", "tenant", "to_state"], registry=r)
        self.tenant_breaker_state = Gauge(
            "gateway_tenant_breaker_state", "A tenant's own breaker on a shared target: 0 closed, 1 half-open, 2 open.",
            ["target", "tenant"], registry=r)
        self.state_errors = Counter("gateway_state_errors", "State store failures by what the limits did.",
                                    ["outcome"], registry=r)
        self.log_dropped = Gauge("gateway_log_records_dropped", "Log records dropped because the queue was full.",
                                 registry=r)
        self.webhook_dropped = Counter("gateway_webhook_dropped", "Webhook notifications dropped (queue full or "
                                       "delivery failed).", registry=r)

    def breaker_changed(self, target: str, to_state: str, tenant: str | None = None) -> None:
        if tenant is not None:
            self.tenant_breaker_transitions.labels(target, tenant, to_state).inc()
            self.tenant_breaker_state.labels(target, tenant).set(_BREAKER_STATE_VALUE.get(to_state, -1))
            return
        self.breaker_transitions.labels(target, to_state).inc()
        self.breaker_state.labels(target).set(_BREAKER_STATE_VALUE.get(to_state, -1))

    def render(self) -> bytes:
        return generate_latest(self.registry)
