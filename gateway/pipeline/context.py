"""The `Call`: one request's record as it flows through the stages.

A stage never reaches into another stage's internals; what it learns, it writes here. At the
end the Call becomes the log line (and, with the ledger, the envelope).

Two lists on it are the pipeline's own:
- `cleanups`: what stages took and must give back, run once when the request is over, last
  registered first, each told how the call ended (`gateway.pipeline.cleanup`);
- `stage_marks`: by the monotonic clock, when the first stage started and when each stage ended
  (`stage_timings()` pairs them with the names), and each attempt carries its own start and end,
  so spans can be built after the response without any stage knowing about tracing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import CLIENT_VALUE_CHARS
from gateway.providers.base import Usage


@dataclass(slots=True)
class Attempt:
    provider: str
    model: str
    status: int = 0
    error: str | None = None  # the error class name when the attempt failed
    latency_ms: float = 0.0
    tokens: int = 0  # prompt + completion tokens this attempt consumed (or is assumed to have)
    # Skipped without a network call: the target's breaker was open or its bulkhead full.
    skipped: bool = False
    waited_ms: float = 0.0  # backoff or retry-after wait before this attempt
    # When the attempt started and ended, by the router's clock (monotonic); 0.0 until it did.
    started: float = 0.0
    ended: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"provider": self.provider, "model": self.model, "status": self.status,
                               "error": self.error, "latency_ms": round(self.latency_ms, 3), "tokens": self.tokens}
        if self.skipped:
            out["skipped"] = True
        if self.waited_ms:
            out["waited_ms"] = round(self.waited_ms, 3)
        return out


# A clean-up step: given the Call and how it ended; returns an awaitable when it has to wait.
Cleanup = Callable[["Call", str], "Awaitable[None] | None"]


@dataclass(slots=True)
class Call:
    request_id: str
    method: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    started_at: float = field(default_factory=time.time)
    kind: str = ""  # chat | embeddings | models | admin | ops
    tenant: str | None = None
    key_id: str | None = None
    route: str | None = None
    feature: str | None = None
    stream: bool = False
    model_requested: str | None = None
    provider: str | None = None
    model_served: str | None = None
    target_model: str | None = None  # the route target's model (what pricing is keyed by)
    prompt_estimate: int | None = None
    body_bytes: int = 0  # the request body's size: says whether its prompt is counted on the loop
    cost_picousd: int = 0
    cache_write_picousd: int = 0  # the part of cost_picousd paid for prompt-cache writes
    # The limits stage settled the call: `usage` and `cost_picousd` are what its budgets counted.
    settled: bool = False
    # Kept only when the body policy (storage.envelope_bodies) says so.
    request_body: str | None = None
    response_body: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    usage: Usage | None = None
    finish_reason: str | None = None
    status: int = 0
    error_type: str | None = None
    error_code: str | None = None
    ttft_ms: float | None = None
    client_disconnected: bool = False
    # How long the request may still run once its client has left (0: it is stopped at once): a
    # stream past its finish reason reads the usage chunk the provider bills anyway.
    linger_s: float = 0.0
    # Headers every response of this call carries, errors included (x-ratelimit-*).
    extra_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    # Clean-up steps, run once by the ingress when the request is over (after the last byte of an
    # answer, or on failure), last registered first: see gateway.pipeline.cleanup.
    cleanups: list[Cleanup] = field(default_factory=list)
    # How the call ended ("served", "failed", "cancelled", "client_gone"), set as the clean-up starts.
    ending: str | None = None
    # The stage that made the answer ("upstream", or one that answered early); None: no answer was made.
    answered_by: str | None = None
    # Called before another attempt when one timed out while its provider worked (set by the limits
    # stage: that attempt's reservation is spent, a new one is made; False: no further attempt).
    again: Callable[[], Awaitable[bool]] | None = None
    # The names of the stages of the plan the call ran, and time.perf_counter when the first started
    # and when each ended (one reading a stage: the end of one is the start of the next).
    stage_names: tuple[str, ...] = ()
    stage_marks: list[float] = field(default_factory=list)

    @property
    def attempt_count(self) -> int:
        n = 0
        for a in self.attempts:
            if not a.skipped:
                n += 1
        return n

    def stage_timings(self) -> list[tuple[str, float, float]]:
        """(stage, start, end) for each stage that ran (one that raised included), in order."""
        marks = self.stage_marks
        return [(name, marks[i], marks[i + 1]) for i, name in enumerate(self.stage_names[:len(marks) - 1])]

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def log_record(self, attempts: list[dict[str, Any]] | None = None, latency_ms: float | None = None
                   ) -> dict[str, Any]:
        usage = self.usage
        # What the client chose (method, path, model) is cut to a bound: a slice, free when short.
        rec: dict[str, Any] = {
            "request_id": self.request_id,
            "method": self.method[:CLIENT_VALUE_CHARS],
            "path": self.path[:CLIENT_VALUE_CHARS],
            "status": self.status,
            "latency_ms": round(self.elapsed_ms() if latency_ms is None else latency_ms, 3),
            "tenant": self.tenant,
            "key_id": self.key_id,
            "route": self.route,
            "provider": self.provider,
            "model": self.model_requested[:CLIENT_VALUE_CHARS] if self.model_requested else self.model_requested,
            "model_served": self.model_served,
            "stream": self.stream,
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None,
            "usage_reported": usage.reported if usage else None,
            "finish_reason": self.finish_reason,
            "cost_usd": f"{self.cost_picousd / 10**12:.6f}" if self.cost_picousd else None,
        }
        if self.feature:
            rec["feature"] = self.feature
        if self.ttft_ms is not None:
            rec["ttft_ms"] = round(self.ttft_ms, 3)
        if self.attempts:
            rec["attempts"] = [a.as_dict() for a in self.attempts] if attempts is None else attempts
        if self.error_type:
            rec["error"] = {"type": self.error_type, "code": self.error_code}
        if self.client_disconnected:
            rec["client_disconnected"] = True
        return rec
