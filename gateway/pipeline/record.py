"""record: what a finished call leaves behind: its cost, metrics, the envelope and the log line."""

from __future__ import annotations

from typing import Any

from gateway.errors import CLIENT_VALUE_CHARS
from gateway.ids import sortable_hex
from gateway.limits.pricing import Pricing
from gateway.observability.logging import AccessLog
from gateway.observability.metrics import Metrics
from gateway.pipeline.context import Call
from gateway.store.envelope_rows import ENVELOPE_FIELDS
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


def envelope_fields(call: Call, attempts: list[dict[str, Any]] | None = None, latency_ms: float | None = None
                    ) -> list[Any]:
    """The call's envelope as its values in ENVELOPE_FIELDS order (the ledger's columns; `day` is
    derived), from which its row is made without a dict. `attempts` and `latency_ms` as the access
    line has them, when it is written too."""
    usage = call.usage
    return [
        sortable_hex(16),  # envelope_id
        call.request_id,
        call.started_at,  # created_at
        call.tenant,
        call.key_id,
        call.route,
        call.feature,
        None,  # template_id
        None,  # template_version
        None,  # template_hash
        call.model_requested[:CLIENT_VALUE_CHARS] if call.model_requested else call.model_requested,
        call.model_served,
        call.provider,
        [a.as_dict() for a in call.attempts] if attempts is None else attempts,
        usage.prompt_tokens if usage else 0,
        usage.completion_tokens if usage else 0,
        usage.cached_tokens if usage else 0,
        call.cost_picousd,
        usage.cache_write_tokens if usage else 0,
        usage.cache_write_1h_tokens if usage else 0,
        call.cache_write_picousd,
        None,  # cache_status
        0,  # cache_saved_tokens
        0,  # cache_saved_picousd
        round(call.elapsed_ms() if latency_ms is None else latency_ms, 3),
        call.ttft_ms,
        call.status,
        call.error_type,
        call.stream,
        bool(usage and usage.reported),  # usage_reported
        None,  # safety_flags
        call.request_body,
        call.response_body,
    ]


def envelope(call: Call) -> dict[str, Any]:
    """The call's envelope, keyed, in the ledger's column order."""
    return dict(zip(ENVELOPE_FIELDS, envelope_fields(call), strict=True))


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
            envelopes.submit_fields(envelope_fields(call, attempts, latency_ms))
    if not quiet:
        access_log.write(call.log_record(attempts, latency_ms))
