"""limits: rate limits and token/cost budgets, as one atomic reservation per request.

Before the call the gateway reserves, on every counter the request draws on (tenant, key and
feature budgets and rate limits; the route's own budget), the prompt estimate plus the capped
completion (n choices x the larger completion field) and their price at the dearest target. If
anything does not fit, the request is refused before any upstream call. After the call each
counter is settled to the actual usage and the rest released; a reservation left by a crashed
process expires, and one a live call still needs is refreshed (limits/refresh.py). Because the
provider is always sent completion fields no larger than what was reserved for each choice, no
interleaving of requests can spend past a budget.

How a reservation is held depends on the state store, and is chosen once, at construction
(limits/reservations.py): the memory store's lanes (limits/local.py, synchronous, no ids) or a
networked store's ids and scripts (limits/networked.py, shielded). This module reads the same for
both. `settle_now`, `fail_now` and `release_now` do the work at once when nothing needs to
suspend (they return None; no coroutine is made) and return an already-shielded awaitable
otherwise; `settle`, `fail` and `release` are the same as coroutines.

What a call is counted as having spent is worked out once, in `settle_now`, and written on the
Call: the envelope (and so the cost report) records the very figures the counters got.

An attempt that timed out while its provider worked may be billed whole (the provider had the
request; it does not know the gateway stopped waiting): its reservation stands as spent (`sunk`),
and a further attempt must first reserve again (`again`; when that does not fit, the timeout is
the answer). So failover after a timeout never spends past a budget; `fail` settles what was sunk
when no attempt answered.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable
from typing import Any

from gateway.errors import BadRequest
from gateway.limits.completion import choices, completion_cap, predicted_text
from gateway.limits.estimate import estimate_embeddings, estimate_prompt
from gateway.limits.hold import BILLED_FAILURES, Hold
from gateway.limits.offload import INLINE_MAX_BYTES, EstimatorBusy, OffLoopCounter
from gateway.limits.plan import LimitsPlan, PlanCache
from gateway.limits.refresh import Refresher
from gateway.limits.refusal import InsufficientQuota, StateDown
from gateway.limits.reservations import reservations_for
from gateway.limits.tokens import count_text
from gateway.observability.metrics import Metrics
from gateway.pipeline.context import Call
from gateway.providers.base import Usage
from gateway.settings import RouteSettings, Settings
from gateway.store.state.base import StateStore

__all__ = ["BILLED_FAILURES", "Hold", "InsufficientQuota", "Limits", "StateDown"]


class Limits:
    def __init__(self, settings: Settings, store: StateStore, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.plans = PlanCache(settings)
        # Read once: pydantic attribute access costs on every request.
        self._estimate_margin = settings.limits.estimate_margin
        self._pricing = settings.pricing
        # Holds not yet settled -> when they were made or last refreshed (time.time()), oldest first:
        # the strategy enters a hold, settlement pops it, the refresher keeps the rest alive.
        self._live: dict[Hold, float] = {}
        self._reservations = reservations_for(store, settings, self._live, metrics)
        self._refresher = Refresher(self._live, self._reservations, settings.limits.reservation_ttl_s)
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
        held = self.reserve_now(call, route, body)
        return held if held is None or isinstance(held, Hold) else await held

    def reserve_now(self, call: Call, route: RouteSettings, body: dict[str, Any]
                    ) -> Hold | Awaitable[Hold | None] | None:
        """`reserve`, with no coroutine when nothing has to wait (a small body, the memory store): the
        Hold (or None: no counter to draw on) at once, else an awaitable of it."""
        plan = self.plans.get(call.tenant, call.key_id, call.feature, call.route or "", route)
        if call.body_bytes > INLINE_MAX_BYTES:  # a large prompt is counted off the loop (see limits/offload.py)
            return self._reserve_counted_off_loop(call, route, body, plan)
        return self._hold(call, body, plan, self.check_input(call, route, body, plan.targets))

    async def _reserve_counted_off_loop(self, call: Call, route: RouteSettings, body: dict[str, Any],
                                        plan: LimitsPlan) -> Hold | None:
        try:
            prompt = await self.counter.run(self.check_input, call, route, body, plan.targets, lane=call.tenant)
        except EstimatorBusy:
            self.metrics.rejected.labels("estimator_busy").inc()
            raise
        held = self._hold(call, body, plan, prompt)
        return held if held is None or isinstance(held, Hold) else await held

    def _hold(self, call: Call, body: dict[str, Any], plan: LimitsPlan, prompt: int
              ) -> Hold | Awaitable[Hold | None] | None:
        if plan.empty:
            return None
        completion = self._completion_cap(body, plan.bounded, call.body_bytes <= INLINE_MAX_BYTES) \
            if call.kind == "chat" else 0
        return self._reservations.reserve(plan, prompt, completion,
                                          self._price_bound(plan.prices, prompt, completion), call)

    def settle_now(self, hold: Hold | None, usage: Usage | None, provider: str | None, model: str | None,
                   call: Call | None = None) -> Awaitable[None] | None:
        """Actual usage replaces the reservation; without reported usage the reservation stands as spent.
        What was counted goes on `call` (its usage and cost, `settled`), for the envelope. At most once
        per hold (later calls, and calls after `fail_now` or `release_now`, do nothing).

        None when the counters were settled here and now (the memory store: no coroutine is made);
        otherwise an awaitable, already shielded: the settlement runs to its end even if the caller
        is cancelled while awaiting it (a client that leaves at this moment cancels its request, but
        a settlement cut short would let the reservation expire and the spend be forgotten), and
        even if it is never awaited (await it to know it finished). The Call's fields are set
        before either returns."""
        if hold is None or hold.done:
            return None
        hold.done = True
        self._live.pop(hold, None)
        counted, usd, writes = self.settled(hold, usage, provider, model)
        if call is not None:
            call.usage, call.cost_picousd, call.cache_write_picousd, call.settled = counted, usd, writes, True
        if hold.sunk:  # the call also spent what earlier attempts reserved (the counters get that apart)
            total, total_usd = self._sink(hold, counted, usd)
            if call is not None:
                call.usage, call.cost_picousd = total, total_usd
        return self._reservations.settle(hold, counted.prompt_tokens + counted.completion_tokens, usd)

    async def settle(self, hold: Hold | None, usage: Usage | None, provider: str | None, model: str | None,
                     call: Call | None = None) -> None:
        """`settle_now`, awaited."""
        pending = self.settle_now(hold, usage, provider, model, call)
        if pending is not None:
            await pending

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

    @staticmethod
    def _sink(hold: Hold, counted: Usage, usd: int) -> tuple[Usage, int]:
        """What the call is recorded as having spent with its sunk reservations: `counted` and `usd` with
        them added (not reported: no provider said what the timed-out attempts cost). The strategy
        settles their counters (each whole) with the hold."""
        prompt, completion = counted.prompt_tokens, counted.completion_tokens
        for sunk in hold.sunk:
            sunk.done = True
            prompt += sunk.prompt_tokens
            completion += sunk.completion_tokens
            usd += sunk.usd_picousd
        return Usage(prompt, completion, counted.cached_tokens, counted.cache_write_tokens,
                     counted.cache_write_1h_tokens, reported=False), usd

    async def again(self, hold: Hold | None) -> bool:
        """The attempt in progress timed out while its provider worked: the provider may bill it whole,
        so its reservation stands as spent, and a further attempt needs a reservation of its own.
        Returns False when that does not fit (or the store cannot be reached): no further attempt.

        The sunk reservations are settled with the hold (`settle`, or `fail` when no attempt answered)."""
        if hold is None or hold.done:
            return True  # nothing reserved: nothing to protect
        sunk = Hold(hold.reservation_id, hold.parts, hold.prompt_tokens, hold.completion_tokens, hold.usd_picousd)
        hold.sunk += (sunk,)  # refreshed with the hold (which keeps its place in the live holds) until settled
        hold.parts = []
        return await self._reservations.again(hold, sunk)

    def fail_now(self, hold: Hold | None, call: Call) -> Awaitable[None] | None:
        """No attempt answered. An attempt that timed out while its provider worked may be billed
        whole (BILLED_FAILURES): its reservation (sunk, or the one held now when the last attempt made
        timed out) stands as spent, and the call is recorded with it against the last target that
        timed out. Without such an attempt, the hold is released: providers do not bill failures.

        Returns like `settle_now`: None when done here and now, else an already-shielded awaitable."""
        if hold is not None and hold.done:
            return None
        timed_out = [a for a in call.attempts if not a.skipped and a.error in BILLED_FAILURES]
        if not timed_out:
            return self.release_now(hold)
        call.provider, call.target_model = timed_out[-1].provider, timed_out[-1].model
        if hold is None:  # nothing reserved: the record is the best estimate, each attempt's prompt
            call.usage = Usage(prompt_tokens=(call.prompt_estimate or 0) * len(timed_out))
            return None
        if len(timed_out) > len(hold.sunk):  # the reservation held now was the last timed-out attempt's
            return self.settle_now(hold, None, call.provider, call.target_model, call)
        hold.done = True
        self._live.pop(hold, None)
        counted, usd = self._sink(hold, Usage(reported=True), 0)
        call.usage, call.cost_picousd, call.cache_write_picousd, call.settled = counted, usd, 0, True
        return self._reservations.release(hold)  # (which settles the sunk reservations whole)

    async def fail(self, hold: Hold | None, call: Call) -> None:
        """`fail_now`, awaited."""
        pending = self.fail_now(hold, call)
        if pending is not None:
            await pending

    def release_now(self, hold: Hold | None) -> Awaitable[None] | None:
        """Nothing was spent on the hold's current reservation: it is given back. Sunk reservations
        (attempts that timed out) stand as spent, so they are settled whole. At most once per hold.
        Returns like `settle_now`: None when done here and now, else an already-shielded awaitable."""
        if hold is None or hold.done:
            return None
        hold.done = True
        self._live.pop(hold, None)
        for sunk in hold.sunk:
            sunk.done = True
        return self._reservations.release(hold)

    async def release(self, hold: Hold | None) -> None:
        """`release_now`, awaited."""
        pending = self.release_now(hold)
        if pending is not None:
            await pending

    # -- live holds outlive the reservation ttl (limits/refresh.py) --------------------------------

    async def refresh_live(self) -> None:
        """Run for the gateway's life: every quarter of the ttl, refresh the holds at least that old."""
        await self._refresher.run()

    async def refresh_due(self, now: float) -> int:
        """Refresh every live hold made or last refreshed a quarter of the ttl ago or more; how many."""
        return await self._refresher.refresh_due(now)
