"""record: what a finished call leaves behind: metrics and the one log line."""

from __future__ import annotations

import logging

from gateway.observability.metrics import Metrics
from gateway.pipeline.context import Call

_MODEL_KINDS = frozenset({"chat", "embeddings"})


def record_call(call: Call, metrics: Metrics, access_log: logging.Logger, *, quiet: bool = False) -> None:
    if call.kind in _MODEL_KINDS and call.route is not None:
        route = call.route
        metrics.requests.labels(route, call.tenant or "", str(call.status)).inc()
        metrics.latency.labels(route).observe(call.elapsed_ms() / 1000)
        for attempt in call.attempts:
            outcome = "skipped" if attempt.skipped else ("ok" if attempt.status == 200 else (attempt.error or "error"))
            metrics.attempts.labels(attempt.provider, attempt.model, outcome).inc()
        if call.usage is not None:
            metrics.tokens.labels(route, "prompt").inc(call.usage.prompt_tokens)
            metrics.tokens.labels(route, "completion").inc(call.usage.completion_tokens)
    if not quiet:
        access_log.info("request", extra={"fields": call.log_record()})
