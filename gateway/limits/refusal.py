"""How a reservation's outcome is told to the client: OpenAI's x-ratelimit-* headers (from the
memory store's lane or a networked store's Decision) and the refusals (429 quota or rate limit;
503 when the store cannot be reached). Shared by both reservation strategies, so a client cannot
tell which store counted it."""

from __future__ import annotations

from gateway.errors import GatewayError, RateLimited, ServiceUnavailable
from gateway.limits.plan import GroupPlan
from gateway.observability.metrics import Metrics
from gateway.resilience.backoff import retry_after_headers
from gateway.store.state.base import Bucket, Decision


class InsufficientQuota(RateLimited):
    type, code = "insufficient_quota", "insufficient_quota"


class StateDown(ServiceUnavailable):
    code = "limits_unavailable"


def lane_headers(plan: GroupPlan, left: list[int], now: float) -> list[tuple[bytes, bytes]]:
    """ratelimit_headers for a hold on the plan's lane: `left` per counter, in order."""
    out: list[tuple[bytes, bytes]] = []
    ends = plan.lane.ends
    for (limit_name, remaining_name, reset_name), indexes in plan.header_windows:
        tight = indexes[0]
        for i in indexes[1:]:
            if left[i] < left[tight]:
                tight = i
        out += ((limit_name, plan.limit_values[tight]), (remaining_name, b"%d" % left[tight]),
                (reset_name, b"%.3fs" % (ends[tight] - now)))
    return out


def ratelimit_headers(decision: Decision, group: tuple[Bucket, ...], plan: GroupPlan) -> list[tuple[bytes, bytes]]:
    """OpenAI's x-ratelimit-* headers from the tightest requests and tokens windows."""
    remaining = decision.remaining
    out: list[tuple[bytes, bytes]] = []
    for (limit_name, remaining_name, reset_name), indexes in plan.header_windows:
        tight = group[indexes[0]]
        left = remaining.get(tight.name, tight.limit)
        for i in indexes[1:]:
            b = group[i]
            b_left = remaining.get(b.name, b.limit)
            if b_left < left:
                tight, left = b, b_left
        out += ((limit_name, b"%d" % tight.limit), (remaining_name, b"%d" % (left if left > 0 else 0)),
                (reset_name, b"%.3fs" % decision.reset_s.get(tight.name, 60.0)))
    return out


def refusal(decision: Decision, group: tuple[Bucket, ...], plan: GroupPlan, metrics: Metrics) -> GatewayError:
    """The error for a reservation that did not fit (counted in `metrics`)."""
    failed = decision.failed
    assert failed is not None
    headers = retry_after_headers(decision.retry_after_s or 1.0)
    headers.update((k.decode(), v.decode()) for k, v in ratelimit_headers(decision, group, plan))
    metrics.rejected.labels("budget" if failed.kind == "period" else "rate_limit").inc()
    if failed.kind == "period":
        return InsufficientQuota(
            f"You exceeded your current quota ({failed.name}: {failed.limit}); it resets at the start of the next "
            f"{failed.period} (UTC).", headers=headers)
    return RateLimited(f"Rate limit reached for {failed.name}: limit {failed.limit}, requested {failed.amount}. "
                       f"Please try again in {decision.retry_after_s or 1:.3g}s.", headers=headers)


def state_down() -> StateDown:
    return StateDown("Budgets cannot be checked right now (the state store is unreachable); retry shortly.",
                     headers=retry_after_headers(1.0))
