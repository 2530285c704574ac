"""record: what a finished call leaves behind: its cost, metrics, the envelope and the log line."""

from __future__ import annotations

from typing import Any

from gateway.errors import CLIENT_VALUE_CHARS
from gateway.ids import sortable_hex
from gateway.limits.pricing import Pricing
from gateway.observability.logging import AccessLog
from gateway.observability.metrics import Metrics
from gateway.pipeline.context import Call
from gateway.providers.base import Usage
from gateway.store.envelope_fields import Envelope, envelope_builder
from gateway.store.envelopes import EnvelopeWriter

_MODEL_KINDS = frozenset({"chat", "embeddings"})


def price_call(call: Call, pricing: Pricing) -> None:
    if call.settled:
        return  # the limits stage priced it, and its budgets counted exactly that
    usage = call.usage
    if usage is not None and call.provider is not None and call.target_model is not None:
        rest, writes = pricing.cost_parts(call.provider, call.target_model, usage.prompt_tokens,
                                          usage.completion_tokens, usage.cached_tokens, usage.cache_write_tokens,
                                          usage.cache_write_1h_tokens)
        call.cost_picousd = rest + writes
        call.cache_write_picousd = writes


# The envelope's columns that hold the Call's attribute (or the Usage's) of the same name as it is.
_AS_ON_CALL = ("request_id", "tenant", "key_id", "route", "feature", "model_served", "provider", "cost_picousd",
               "cache_write_picousd", "ttft_ms", "status", "error_type", "stream", "request_body", "response_body")
_AS_ON_USAGE = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens", "cache_write_1h_tokens")
# Raises at import for a column with no value (but the later stages').
_build_envelope = envelope_builder(
    {"call": _AS_ON_CALL, "usage": _AS_ON_USAGE},
    ("envelope_id", "created_at", "model_requested", "attempts", "latency_ms", "usage_reported"),
)
_NO_USAGE = Usage()  # zeros


def envelope_of(call: Call, attempts: list[dict[str, Any]] | None = None, latency_ms: float | None = None
                ) -> Envelope:
    """The call's envelope, by name. `attempts` and `latency_ms` as the access line has them, when it
    is written too. The columns of stages a call has not met (templates, the response cache, safety
    flags) hold envelope_fields.LATER_STAGES."""
    usage = call.usage
    model = call.model_requested
    return _build_envelope(
        call,
        usage or _NO_USAGE,
        envelope_id=sortable_hex(16),
        created_at=call.started_at,
        model_requested=model[:CLIENT_VALUE_CHARS] if model else model,
        attempts=[a.as_dict() for a in call.attempts] if attempts is None else attempts,
        latency_ms=round(call.elapsed_ms() if latency_ms is None else latency_ms, 3),
        usage_reported=bool(usage and usage.reported),
    )


def record_call(call: Call, metrics: Metrics, access_log: AccessLog, pricing: Pricing,
                envelopes: EnvelopeWriter | None, *, quiet: bool = False) -> None:
    # One reading of the latency and one list of the attempts for the metric, the envelope and the
    # log line: they agree to the microsecond, and nothing is worked out twice.
    latency_ms = call.elapsed_ms()
    attempts = [a.as_dict() for a in call.attempts]
    if call.kind in _MODEL_KINDS and call.route is not None:
        price_call(call, pricing)
        route = call.route
        metrics.requests.inc((route, call.tenant or "", str(call.status)))
        metrics.latency.observe((route,), latency_ms / 1000)
        for attempt in call.attempts:
            outcome = "skipped" if attempt.skipped else ("ok" if attempt.status == 200 else (attempt.error or "error"))
            metrics.attempts.inc((attempt.provider, attempt.model, outcome))
        usage = call.usage
        if usage is not None:
            metrics.tokens.inc((route, "prompt"), usage.prompt_tokens)
            metrics.tokens.inc((route, "completion"), usage.completion_tokens)
            if usage.reported and call.prompt_estimate:
                metrics.estimate_gap.observe((call.provider or "",),
                                             (usage.prompt_tokens - call.prompt_estimate) / call.prompt_estimate)
        if envelopes is not None and call.tenant is not None:
            envelopes.submit_envelope(envelope_of(call, attempts, latency_ms))
    if not quiet:
        access_log.write(call.log_record(attempts, latency_ms))
