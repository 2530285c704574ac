"""record: what a finished call leaves behind: its cost, metrics, the envelope and the log line."""

from __future__ import annotations

from typing import Any

from gateway.errors import CLIENT_VALUE_CHARS
from gateway.ids import sortable_hex
from gateway.limits.pricing import Pricing
from gateway.observability.logging import AccessLog
from gateway.observability.metrics import Metrics
from gateway.pipeline.context import Call
from gateway.store.envelope_fields import Envelope
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


def envelope_of(call: Call, attempts: list[dict[str, Any]] | None = None, latency_ms: float | None = None
                ) -> Envelope:
    """The call's envelope, by name. `attempts` and `latency_ms` as the access line has them, when it
    is written too. The columns of stages a call has not met (templates, the response cache, safety
    flags) keep the Envelope's defaults."""
    usage = call.usage
    model = call.model_requested
    return Envelope(
        envelope_id=sortable_hex(16),
        request_id=call.request_id,
        created_at=call.started_at,
        tenant=call.tenant,
        key_id=call.key_id,
        route=call.route,
        feature=call.feature,
        model_requested=model[:CLIENT_VALUE_CHARS] if model else model,
        model_served=call.model_served,
        provider=call.provider,
        attempts=[a.as_dict() for a in call.attempts] if attempts is None else attempts,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        cached_tokens=usage.cached_tokens if usage else 0,
        cost_picousd=call.cost_picousd,
        cache_write_tokens=usage.cache_write_tokens if usage else 0,
        cache_write_1h_tokens=usage.cache_write_1h_tokens if usage else 0,
        cache_write_picousd=call.cache_write_picousd,
        latency_ms=round(call.elapsed_ms() if latency_ms is None else latency_ms, 3),
        ttft_ms=call.ttft_ms,
        status=call.status,
        error_type=call.error_type,
        stream=call.stream,
        usage_reported=bool(usage and usage.reported),
        request_body=call.request_body,
        response_body=call.response_body,
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
