"""limits: rate limits and token/cost budgets, as one atomic reservation per request.

Before the call the gateway reserves, on every counter the request draws on (tenant, key and
feature budgets and rate limits; the route's own budget), the prompt estimate plus the capped
completion (n choices x the larger completion field) and their price at the dearest target. If
anything does not fit, the request is refused before any upstream call. After the call each
counter is settled to the actual usage and the rest released; a reservation left by a crashed
process expires. Because the provider is always sent completion fields no larger than what was
reserved for each choice, no interleaving of requests can spend past a budget.

A call may outlive `reservation_ttl_s` (a long stream, a slow upstream): its hold must not expire
while it runs, or its room would be handed to others while it still spends. Live holds are kept
in one insertion-ordered dict (a dict insert at reserve, a pop at settle: nothing per request
beyond that), and one task (`refresh_live`) refreshes every hold older than a quarter of the ttl,
each time the same quarter passes: a hold is refreshed when at most half its ttl has gone by.
A crashed process refreshes nothing, so what it held still expires.

What a call is counted as having spent is worked out once, in `settle`, and written on the Call:
the envelope (and so the cost report) records the very figures the counters got.

An attempt that timed out while its provider worked may be billed whole (the provider had the
request; it does not know the gateway stopped waiting): its reservation stands as spent (`sunk`),
and a further attempt must first reserve again (`again`; when that does not fit, the timeout is
the answer). So failover after a timeout never spends past a budget; `fail` settles what was sunk
when no attempt answered.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from gateway.errors import BadRequest, GatewayError, RateLimited, ServiceUnavailable
from gateway.ids import random_hex
from gateway.limits.completion import choices, completion_cap, predicted_text
from gateway.limits.estimate import estimate_embeddings, estimate_prompt
from gateway.limits.offload import INLINE_MAX_BYTES, EstimatorBusy, OffLoopCounter
from gateway.limits.plan import GroupPlan, PlanCache
from gateway.limits.tokens import count_text
from gateway.observability.metrics import Metrics
from gateway.pipeline.context import Call
from gateway.providers.base import Usage
from gateway.resilience.backoff import retry_after_headers
from gateway.settings import RouteSettings, Settings
from gateway.store.state.base import Bucket, Decision, StateStore, StateUnavailable
from gateway.store.state.memory import Held, MemoryStateStore

_log = logging.getLogger("gateway.limits")

# The refresh loop never wakes more often than this, whatever the ttl (a ttl that short could not
# be kept anyway: it would expire holds between two turns of a busy event loop).
_MIN_REFRESH_EVERY_S = 0.05


# Attempts that failed in a way the provider may still bill whole: it had the request and was
# working on it when the gateway stopped waiting (Attempt.error names).
BILLED_FAILURES = ("UpstreamTimeout",)


class InsufficientQuota(RateLimited):
    type, code = "insufficient_quota", "insufficient_quota"


class StateDown(ServiceUnavailable):
    code = "limits_unavailable"


# eq=False: a Hold is a key of the live holds (identity hash).
@dataclass(slots=True, eq=False)
class Hold:
    """What one call reserved; settled or released exactly once."""

    reservation_id: str  # "" when the store is in this process: it hands over the hold itself
    groups: list[tuple[GroupPlan, tuple[Bucket, ...]]]  # what each group holds in a networked store
    held: list[tuple[GroupPlan, Held]]  # what each group holds in the memory store
    prompt_tokens: int
    completion_tokens: int
    usd_picousd: int
    done: bool = False
    # Earlier attempts' reservations, spent: each timed out while its provider worked (it may have
    # billed them whole), and the next attempt reserved anew (`Limits.again`).
    sunk: tuple[Hold, ...] = ()


def _lane_headers(plan: GroupPlan, left: list[int], now: float) -> list[tuple[bytes, bytes]]:
    """_ratelimit_headers for a hold on the plan's lane: `left` per counter, in order."""
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


def _ratelimit_headers(decision: Decision, group: tuple[Bucket, ...], plan: GroupPlan) -> list[tuple[bytes, bytes]]:
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


class Limits:
    def __init__(self, settings: Settings, store: StateStore, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.policy = settings.limits.on_state_error
        self.plans = PlanCache(settings)
        # The memory store is called directly: its holds need no ids, its calls no coroutines, and
        # nothing it does suspends, so no cancellation can cut a settlement short (a networked store's
        # calls are shielded).
        self._local = store if isinstance(store, MemoryStateStore) else None
        # Read once: pydantic attribute access costs on every request.
        self._ttl_s = settings.limits.reservation_ttl_s
        self._estimate_margin = settings.limits.estimate_margin
        self._pricing = settings.pricing
        # Holds not yet settled -> when they were made or last refreshed (time.time()), oldest first.
        self._live: dict[Hold, float] = {}
        self.counter = OffLoopCounter()

    def _completion_cap(self, body: dict[str, Any], needs_bound: bool, inline: bool) -> int:
        """What the call may generate: n choices, each up to the larger completion field (a provider
        may read either, and bills every choice), plus a prediction's tokens it may reject."""
        asked = completion_cap(body)
        if asked is None:
            if not needs_bound:
                return 0
            # Unbounded completions cannot be reserved: the provider is given the default bound.
            asked = body["max_tokens"] = self.settings.limits.default_max_tokens
        predicted = predicted_text(body) if "prediction" in body else ""
        if predicted:
            # Counted on the loop only when the body is small; else by its UTF-8 bytes (no token is
            # shorter than a byte): a bound, never an undercount.
            # (o200k, raised by the estimate margin: a target of another family may count more)
            asked += math.ceil(count_text(predicted) * (1 + self._estimate_margin)) if inline \
                else len(predicted.encode("utf-8", "replace"))
        return asked * choices(body)

    @staticmethod
    def _price_bound(prices: tuple[tuple[int, int], ...], prompt: int, completion: int) -> int:
        """The call's price at the dearest target it may reach."""
        worst = 0
        for per_input, per_output in prices:
            cost = prompt * per_input + completion * per_output
            if cost > worst:
                worst = cost
        return worst

    def check_input(self, call: Call, route: RouteSettings, body: dict[str, Any],
                    targets: tuple[tuple[str, str], ...] | None = None) -> int:
        """The prompt estimate; a prompt over the route's max_input_tokens is refused here."""
        if call.kind == "embeddings":
            prompt = estimate_embeddings(body, route.targets[0].model)
        else:
            if targets is None:
                targets = tuple((self.settings.providers[t.provider].kind, t.model) for t in route.targets)
            prompt = estimate_prompt(body, targets, self._estimate_margin)
        if route.max_input_tokens is not None and prompt > route.max_input_tokens:
            raise BadRequest(
                f"This model's maximum context length is {route.max_input_tokens} tokens. However, your messages "
                f"resulted in {prompt} tokens. Please reduce the length of the messages.",
                param="messages", code="context_length_exceeded")
        call.prompt_estimate = prompt
        return prompt

    async def reserve(self, call: Call, route: RouteSettings, body: dict[str, Any]) -> Hold | None:
        """Hold what the call may spend on every counter it draws on; the x-ratelimit-* headers go on the Call."""
        plan = self.plans.get(call.tenant, call.key_id, call.feature, call.route or "", route)
        if call.body_bytes <= INLINE_MAX_BYTES:
            prompt = self.check_input(call, route, body, plan.targets)
        else:  # a large prompt is counted off the loop (see limits/offload.py)
            try:
                prompt = await self.counter.run(self.check_input, call, route, body, plan.targets, lane=call.tenant)
            except EstimatorBusy:
                self.metrics.rejected.labels("estimator_busy").inc()
                raise
        if plan.empty:
            return None
        completion = self._completion_cap(body, plan.bounded, call.body_bytes <= INLINE_MAX_BYTES) \
            if call.kind == "chat" else 0
        tokens = prompt + completion
        usd = self._price_bound(plan.prices, prompt, completion)
        local = self._local
        hold = Hold("" if local is not None else random_hex(12), [], [], prompt, completion, usd)
        if local is not None:
            now = time.time()
            for group_plan in plan.groups:
                left: list[int] = []
                held = local.hold_lane(group_plan.lane, group_plan.spent(tokens, usd), self._ttl_s, now, left)
                if isinstance(held, Decision):
                    await self.release(hold)
                    raise self._refusal(held, group_plan.buckets(tokens, usd), group_plan)
                hold.held.append((group_plan, held))
                call.extra_headers += _lane_headers(group_plan, left, now)
            self._live[hold] = now
            return hold
        for group_plan in plan.groups:
            group = group_plan.buckets(tokens, usd)
            try:
                decision = await self.store.reserve(hold.reservation_id, group, self._ttl_s)
            except StateUnavailable as e:
                if self._unchecked_allowed(group, e):
                    continue
                await self.release(hold)
                raise StateDown("Budgets cannot be checked right now (the state store is unreachable); retry shortly.",
                                headers=retry_after_headers(1.0)) from None
            if not decision.ok:
                await self.release(hold)
                raise self._refusal(decision, group, group_plan)
            hold.groups.append((group_plan, group))
            call.extra_headers += _ratelimit_headers(decision, group, group_plan)
        if not hold.groups:
            return None
        self._live[hold] = time.time()
        return hold

    def _unchecked_allowed(self, group: tuple[Bucket, ...], error: StateUnavailable) -> bool:
        has_budget = any(b.kind == "period" for b in group)
        allowed = (not has_budget or self.policy.budgets == "open") and self.policy.rate_limits == "open"
        self.metrics.state_errors.labels("open" if allowed else "closed").inc()
        _log.error("state store unreachable; limits %s", "skipped (fail-open)" if allowed else "refused (fail-closed)",
                   extra={"fields": {"error": str(error)[:300]}})
        return allowed

    def _refusal(self, decision: Decision, group: tuple[Bucket, ...], plan: GroupPlan) -> GatewayError:
        failed = decision.failed
        assert failed is not None
        headers = retry_after_headers(decision.retry_after_s or 1.0)
        headers.update((k.decode(), v.decode()) for k, v in _ratelimit_headers(decision, group, plan))
        self.metrics.rejected.labels("budget" if failed.kind == "period" else "rate_limit").inc()
        if failed.kind == "period":
            return InsufficientQuota(
                f"You exceeded your current quota ({failed.name}: {failed.limit}); it resets at the start of the next "
                f"{failed.period} (UTC).", headers=headers)
        return RateLimited(f"Rate limit reached for {failed.name}: limit {failed.limit}, requested {failed.amount}. "
                           f"Please try again in {decision.retry_after_s or 1:.3g}s.", headers=headers)

    async def settle(self, hold: Hold | None, usage: Usage | None, provider: str | None, model: str | None,
                     call: Call | None = None) -> None:
        """Actual usage replaces the reservation; without reported usage the reservation stands as spent.
        What was counted goes on `call` (its usage and cost, `settled`), for the envelope.

        Shielded: a client that leaves at this moment cancels its request, but a settlement cut
        short would let the reservation expire and the spend be forgotten."""
        if hold is None or hold.done:
            return
        hold.done = True
        self._live.pop(hold, None)
        counted, usd, writes = self.settled(hold, usage, provider, model)
        tokens = counted.prompt_tokens + counted.completion_tokens
        if call is not None:
            call.usage, call.cost_picousd, call.cache_write_picousd, call.settled = counted, usd, writes, True
        if hold.sunk:  # the call also spent what earlier attempts reserved (the counters get that apart)
            total, total_usd = self._sink(hold, counted, usd)
            if call is not None:
                call.usage, call.cost_picousd = total, total_usd
        if self._local is not None:
            for group_plan, held in hold.held:
                self._local.settle_held(held, group_plan.spent(tokens, usd))
        else:
            await asyncio.shield(self._settle_all(hold, tokens, usd) if hold.sunk else self._settle(hold, tokens, usd))

    def settled(self, hold: Hold, usage: Usage | None, provider: str | None, model: str | None
                ) -> tuple[Usage, int, int]:
        """What the call is counted as having spent, its price in pico-dollars, and the part of that
        price paid for prompt-cache writes: the reported usage at the target that served it, or else
        the whole reservation (usage_reported false: a call cut short may have been billed for all it
        was allowed)."""
        if usage is None or not usage.reported or provider is None or model is None:
            return Usage(hold.prompt_tokens, hold.completion_tokens), hold.usd_picousd, 0
        rest, writes = self._pricing.cost_parts(provider, model, usage.prompt_tokens, usage.completion_tokens,
                                                usage.cached_tokens, usage.cache_write_tokens,
                                                usage.cache_write_1h_tokens)
        return usage, rest + writes, writes

    async def _settle(self, hold: Hold, actual_tokens: int, actual_usd: int) -> None:
        for group_plan, group in hold.groups:
            try:
                await self.store.settle(hold.reservation_id, group, group_plan.actual(actual_tokens, actual_usd))
            except StateUnavailable:
                self.metrics.state_errors.labels("settle").inc()
                _log.error("state store unreachable at settlement; the reservation will expire")

    def _sink(self, hold: Hold, counted: Usage, usd: int) -> tuple[Usage, int]:
        """The sunk reservations as spent: `counted` and `usd` with them added (not reported: no provider
        said what the timed-out attempts cost). The memory store's counters are settled here; a
        networked store's by `_settle_all`."""
        prompt, completion = counted.prompt_tokens, counted.completion_tokens
        for sunk in hold.sunk:
            sunk.done = True
            prompt += sunk.prompt_tokens
            completion += sunk.completion_tokens
            usd += sunk.usd_picousd
            if self._local is not None:
                tokens = sunk.prompt_tokens + sunk.completion_tokens
                for group_plan, held in sunk.held:
                    self._local.settle_held(held, group_plan.spent(tokens, sunk.usd_picousd))
        return Usage(prompt, completion, counted.cached_tokens, counted.cache_write_tokens,
                     counted.cache_write_1h_tokens, reported=False), usd

    async def _settle_all(self, hold: Hold, tokens: int, usd: int) -> None:
        """A networked store: each sunk reservation settled as spent, and the hold at (tokens, usd)."""
        await self._settle_sunk(hold)
        await self._settle(hold, tokens, usd)

    async def _settle_sunk(self, hold: Hold) -> None:
        """A networked store: each sunk reservation settled as spent, whole."""
        for sunk in hold.sunk:
            await self._settle(sunk, sunk.prompt_tokens + sunk.completion_tokens, sunk.usd_picousd)

    async def again(self, hold: Hold | None) -> bool:
        """The attempt in progress timed out while its provider worked: the provider may bill it whole,
        so its reservation stands as spent, and a further attempt needs a reservation of its own.
        Returns False when that does not fit (or the store cannot be reached): no further attempt.

        The sunk reservations are settled with the hold (`settle`, or `fail` when no attempt answered)."""
        if hold is None or hold.done:
            return True  # nothing reserved: nothing to protect
        sunk = Hold(hold.reservation_id, hold.groups, hold.held, hold.prompt_tokens, hold.completion_tokens,
                    hold.usd_picousd)
        hold.sunk += (sunk,)  # refreshed with the hold (which keeps its place in the live holds) until settled
        hold.reservation_id, hold.groups, hold.held = "" if self._local is not None else random_hex(12), [], []
        tokens = hold.prompt_tokens + hold.completion_tokens
        if self._local is not None:
            now = time.time()
            for group_plan, _ in sunk.held:
                held = self._local.hold_lane(group_plan.lane, group_plan.spent(tokens, hold.usd_picousd),
                                             self._ttl_s, now, [])
                if isinstance(held, Decision):
                    self._release_live(hold)
                    return False
                hold.held.append((group_plan, held))
        else:
            for group_plan, group in sunk.groups:
                if not await asyncio.shield(self._hold_again(hold, group_plan, group)):
                    # (a reserve that failed holds nothing; the ones before it are released)
                    if not hold.done:
                        await asyncio.shield(self._release(hold))
                        hold.groups = []
                    return False
        return True

    async def _hold_again(self, hold: Hold, group_plan: GroupPlan, group: tuple[Bucket, ...]) -> bool:
        """One group's new reservation, put on the hold where its settlement or release finds it.
        Shielded by the caller: when the call ended while it was on its way (the client left), what it
        got is released here, as nothing else would (it would count until it expired)."""
        rid = hold.reservation_id
        try:
            decision = await self.store.reserve(rid, group, self._ttl_s)
        except StateUnavailable:
            return False
        if not decision.ok:
            return False
        if hold.done:
            try:
                await self.store.release(rid, group)
            except StateUnavailable:
                self.metrics.state_errors.labels("release").inc()
            return False
        hold.groups.append((group_plan, group))
        return True

    def _release_live(self, hold: Hold) -> None:
        """The memory store: what `hold` holds now, released (its sunk reservations stay)."""
        assert self._local is not None
        for group_plan, held in hold.held:
            self._local.settle_held(held, group_plan.nothing)
        hold.held = []

    async def fail(self, hold: Hold | None, call: Call) -> None:
        """No attempt answered. An attempt that timed out while its provider worked may be billed
        whole (BILLED_FAILURES): its reservation (sunk, or the one held now when the last attempt made
        timed out) stands as spent, and the call is recorded with it against the last target that
        timed out. Without such an attempt, the hold is released: providers do not bill failures."""
        if hold is not None and hold.done:
            return
        timed_out = [a for a in call.attempts if not a.skipped and a.error in BILLED_FAILURES]
        if not timed_out:
            await self.release(hold)
            return
        call.provider, call.target_model = timed_out[-1].provider, timed_out[-1].model
        if hold is None:  # nothing reserved: the record is the best estimate, each attempt's prompt
            call.usage = Usage(prompt_tokens=(call.prompt_estimate or 0) * len(timed_out))
            return
        if len(timed_out) > len(hold.sunk):  # the reservation held now was the last timed-out attempt's
            await self.settle(hold, None, call.provider, call.target_model, call)
            return
        hold.done = True
        self._live.pop(hold, None)
        counted, usd = self._sink(hold, Usage(reported=True), 0)
        call.usage, call.cost_picousd, call.cache_write_picousd, call.settled = counted, usd, 0, True
        if self._local is not None:
            self._release_live(hold)
        else:
            await asyncio.shield(self._release_and_settle_sunk(hold))

    async def _release_and_settle_sunk(self, hold: Hold) -> None:
        await self._release(hold)
        await self._settle_sunk(hold)

    async def release(self, hold: Hold | None) -> None:
        if hold is None or hold.done:
            return
        hold.done = True
        self._live.pop(hold, None)
        if self._local is not None:
            for group_plan, held in hold.held:
                self._local.settle_held(held, group_plan.nothing)
        else:
            await asyncio.shield(self._release(hold))

    async def _release(self, hold: Hold) -> None:
        for _, group in hold.groups:
            try:
                await self.store.release(hold.reservation_id, group)
            except StateUnavailable:
                self.metrics.state_errors.labels("release").inc()

    # -- live holds outlive the reservation ttl -------------------------------------------------

    async def refresh_live(self) -> None:
        """Run for the gateway's life: every quarter of the ttl, refresh the holds at least that old."""
        every = max(self._ttl_s / 4, _MIN_REFRESH_EVERY_S)
        while True:
            await asyncio.sleep(every)
            try:
                await self.refresh_due(time.time())
            except Exception:  # a background loop's boundary: one bad pass must not end the refreshing
                _log.exception("refreshing live reservations failed")

    async def refresh_due(self, now: float) -> int:
        """Refresh every live hold made or last refreshed a quarter of the ttl ago or more; how many."""
        live, ttl = self._live, self._ttl_s
        before = now - ttl / 4
        due: list[Hold] = []
        for hold, at in live.items():
            if at > before:
                break  # the rest are younger
            due.append(hold)
        for hold in due:  # to the back of the line first: a settle during an await below pops it
            del live[hold]
            live[hold] = now
        local = self._local
        failed: StateUnavailable | None = None
        for hold in due:
            if local is not None:
                for _, held in hold.held:
                    local.refresh_held(held, ttl, now)
                for sunk in hold.sunk:
                    for _, held in sunk.held:
                        local.refresh_held(held, ttl, now)
                continue
            for part in (hold, *hold.sunk) if hold.sunk else (hold,):
                for _, group in part.groups:
                    if hold.done:
                        break
                    try:
                        await self.store.refresh(part.reservation_id, group, ttl, now)
                    except StateUnavailable as e:
                        self.metrics.state_errors.labels("refresh").inc()
                        failed = e
        if failed is not None:  # one line a pass, however many holds it could not refresh
            _log.error("state store unreachable; live reservations were not refreshed (they expire if it stays so)",
                       extra={"fields": {"error": str(failed)[:300]}})
        return len(due)
