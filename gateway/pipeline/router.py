"""router: a route's targets, tried until one answers, within the request's budgets.

Failover is a plain loop. Each request carries budgets that decrement across attempts: the
attempts left (`retries` after the first), the deadline (each attempt gets the smaller of
`attempt_timeout_s` and what is left), and optionally a token budget (what failed attempts
consumed is spent; each new attempt's completion fields are lowered to what is left, shared by
the request's `n` choices).

What happens after a failure depends on what failed:
- the request itself (an upstream 400/404/422): answer at once, every target would agree;
- the gateway's credentials (401/403): never that target again for this request; next target;
- a rate limit (429): that target is not tried again before its `retry-after`, if that fits
  in the deadline; meanwhile (or otherwise) the next target is tried at once;
- anything else retryable (connect error, timeout, 408, 409, 5xx): next target at once; a
  target tried before waits a full-jitter exponential backoff first.
A target whose breaker is open, or whose bulkhead is full, is skipped without a network call.
Every attempt, and every skip, is written on the Call.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.errors import (
    BadRequest,
    DeadlineExceeded,
    GatewayError,
    NoTargetAvailable,
    TokenBudgetExceeded,
    TokenBudgetExhausted,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.limits.completion import capped_completion, choices
from gateway.limits.tokens import count_messages
from gateway.pipeline.context import Attempt, Call
from gateway.providers.base import ChatResult, ChatStream, EmbeddingsResult, Provider, Usage
from gateway.resilience.backoff import full_jitter, parse_retry_after, retry_after_headers
from gateway.resilience.breaker import BreakerRegistry, Permit
from gateway.resilience.bulkhead import Bulkhead
from gateway.settings import RouteSettings, TargetSettings

T = TypeVar("T")
AttemptFn = Callable[[Provider, TargetSettings, float, dict[str, Any]], Awaitable[tuple[T, Usage | None]]]
# Called when an attempt timed out while its provider worked, before another is made: the limits
# stage counts that attempt's reservation as spent and reserves again; False: no further attempt.
Again = Callable[[], Awaitable[bool]]

# An attempt needs at least this much of the deadline to be worth starting.
_MIN_ATTEMPT_S = 0.05


def plan(targets: list[TargetSettings], rng: random.Random) -> list[TargetSettings]:
    """Targets by priority; equal priorities in a weighted random order (Efraimidis-Spirakis)."""
    if len(targets) == 1:
        return targets
    return sorted(targets, key=lambda t: (t.priority, -(rng.random() ** (1.0 / t.weight))))


@dataclass(slots=True)
class _TokenBudget:
    """The request's token budget: what is left, shared by the n choices, decides each attempt's
    completion fields (all of them: a provider may read either)."""

    total: int
    prompt: int
    choices: int = 1
    spent: int = 0

    def attempt_body(self, body: dict[str, Any], attempts_made: int) -> dict[str, Any]:
        room = (self.total - self.spent - self.prompt) // self.choices
        if room < 1:
            if attempts_made == 0:
                raise TokenBudgetExceeded(
                    f"The prompt ({self.prompt} tokens) and {self.choices} choice(s) of at least one token do not "
                    f"fit in this route's token budget of {self.total}.", param="messages")
            raise TokenBudgetExhausted(
                f"The request's token budget of {self.total} is spent ({self.spent} tokens over {attempts_made} "
                "failed attempts); another attempt would not fit.")
        return capped_completion(body, room)


@dataclass(slots=True)
class _State:
    """One request's progress through the loop."""

    deadline: float
    attempts_left: int
    not_before: dict[str, float] = field(default_factory=dict)
    excluded: set[str] = field(default_factory=set)
    tries: dict[str, int] = field(default_factory=dict)
    skipped: set[str] = field(default_factory=set)
    last_error: GatewayError | None = None
    position: int = 0


class Router:
    def __init__(self, providers: dict[str, Provider], breakers: BreakerRegistry, bulkheads: dict[str, Bulkhead],
                 rng: random.Random | None = None, clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.providers = providers
        self.sleep = sleep  # waits out a backoff; a test's sleep moves its clock instead
        self.breakers = breakers
        self.bulkheads = bulkheads
        self.rng = rng or random.Random()
        self.clock = clock

    # -- the three kinds of call -------------------------------------------------------------
    async def chat(self, call: Call, route: RouteSettings, body: dict[str, Any], again: Again | None = None
                   ) -> ChatResult:
        async def attempt(p: Provider, t: TargetSettings, limit_s: float,
                          b: dict[str, Any]) -> tuple[ChatResult, Usage | None]:
            result = await p.chat(b, t.model, timeout_s=limit_s)
            return result, result.usage

        return await self._run(call, route, body, attempt, count_prompt=True, again=again)

    async def chat_stream(self, call: Call, route: RouteSettings, body: dict[str, Any],
                          include_usage: bool, again: Again | None = None) -> ChatStream:
        async def attempt(p: Provider, t: TargetSettings, limit_s: float,
                          b: dict[str, Any]) -> tuple[ChatStream, Usage | None]:
            # The stream counts as answered only once its first chunk is here: until a byte
            # has reached the client, a failure can still go to another target.
            async with asyncio.timeout(limit_s):
                stream = await p.chat_stream(b, t.model, timeout_s=limit_s, include_usage=include_usage)
                try:
                    first = await anext(stream.chunks, None)
                except BaseException:
                    await stream.aclose()
                    raise
            return _prepend(stream, first), None

        return await self._run(call, route, body, attempt, count_prompt=True, again=again)

    async def embeddings(self, call: Call, route: RouteSettings, body: dict[str, Any], again: Again | None = None
                         ) -> EmbeddingsResult:
        async def attempt(p: Provider, t: TargetSettings, limit_s: float,
                          b: dict[str, Any]) -> tuple[EmbeddingsResult, Usage | None]:
            result = await p.embeddings(b, t.model, timeout_s=limit_s)
            return result, result.usage

        return await self._run(call, route, body, attempt, count_prompt=False, again=again)

    # -- the loop ----------------------------------------------------------------------------
    async def _run(self, call: Call, route: RouteSettings, body: dict[str, Any], attempt: AttemptFn[T],
                   *, count_prompt: bool, again: Again | None = None) -> T:
        order = plan(route.targets, self.rng)
        state = _State(deadline=call.started + route.deadline_s, attempts_left=1 + route.retries)
        budget = None
        if route.token_budget is not None and count_prompt:
            # The limits stage's estimate (it counts tools, images, ... at the dearest target, a large
            # prompt off the loop): in the pipeline it always ran before; the messages' text when the
            # router is used on its own.
            prompt = call.prompt_estimate
            if prompt is None:
                prompt = count_messages(body.get("messages") or (), order[0].model)
            budget = _TokenBudget(total=route.token_budget, prompt=prompt, choices=choices(body))
        while state.attempts_left > 0:
            attempt_body = body if budget is None else budget.attempt_body(body, call.attempt_count)
            picked = await self._pick(call, order, state)
            if picked is None:
                break
            target, permit, waited = picked
            provider = self.providers[target.provider]
            bulkhead = self.bulkheads[target.provider]
            if not await bulkhead.acquire():
                permit.release()
                state.excluded.add(target.key)
                call.attempts.append(Attempt(target.provider, target.model, error="BulkheadFull", skipped=True))
                continue
            started = self.clock()
            record = Attempt(target.provider, target.model, waited_ms=waited * 1000, started=started)
            call.attempts.append(record)
            state.attempts_left -= 1
            state.tries[target.key] = state.tries.get(target.key, 0) + 1
            timeout = max(_MIN_ATTEMPT_S, min(route.attempt_timeout_s or provider.settings.timeout_s,
                                               state.deadline - started))
            try:
                result, usage = await attempt(provider, target, timeout, attempt_body)
            except TimeoutError:
                # The stream's first chunk did not come in time (see chat_stream).
                timed_out = UpstreamTimeout(f"provider '{target.provider}' sent no first chunk within {timeout:g}s")
                self._failed(state, route, target, permit, record, timed_out, started, budget)
                if again is not None and state.attempts_left > 0 and not await again():
                    raise timed_out from None
                continue
            except UpstreamError as e:
                self._failed(state, route, target, permit, record, e, started, budget)
                if not e.retryable:
                    raise
                # The provider had the request and may bill it whole: another attempt is reserved anew.
                if isinstance(e, UpstreamTimeout) and again is not None and state.attempts_left > 0 \
                        and not await again():
                    raise
                continue
            except BadRequest as e:
                # The request cannot be put to any target (e.g. nested too deeply to encode): the
                # client's fault, no verdict on the target, nothing to retry.
                permit.release()
                record.error, record.status = type(e).__name__, e.status
                self._ended(record)
                raise
            except BaseException:
                permit.release()  # cancelled (the client left) or a gateway bug: no verdict on the target
                record.error = "Cancelled"
                self._ended(record)
                raise
            finally:
                bulkhead.release()
            permit.success()
            record.status = 200
            self._ended(record)
            if usage is not None:
                record.tokens = usage.total_tokens
            call.provider, call.target_model = target.provider, target.model
            return result
        raise self._exhausted(call, route, state)

    def _ended(self, record: Attempt) -> None:
        record.ended = self.clock()
        record.latency_ms = (record.ended - record.started) * 1000

    async def _pick(self, call: Call, order: list[TargetSettings],
                    state: _State) -> tuple[TargetSettings, Permit, float] | None:
        """The next target to try (waiting out a backoff if that is all there is), or None."""
        waited = 0.0
        while True:
            now = self.clock()
            if state.deadline - now < _MIN_ATTEMPT_S:
                return None
            earliest: float | None = None
            n = len(order)
            for k in range(n):
                target = order[(state.position + k) % n]
                if target.key in state.excluded:
                    continue
                ready_at = state.not_before.get(target.key, 0.0)
                if ready_at > now:
                    earliest = ready_at if earliest is None else min(earliest, ready_at)
                    continue
                permit = self.breakers.get(target.key).try_acquire(call.tenant)
                if permit is None:
                    if target.key not in state.skipped:
                        state.skipped.add(target.key)
                        call.attempts.append(Attempt(target.provider, target.model, error="BreakerOpen",
                                                     skipped=True))
                    continue
                state.position = (state.position + k + 1) % n
                return target, permit, waited
            if earliest is None or earliest > state.deadline - _MIN_ATTEMPT_S:
                return None
            await self.sleep(earliest - now)
            waited += earliest - now

    def _failed(self, state: _State, route: RouteSettings, target: TargetSettings, permit: Permit,
                record: Attempt, error: UpstreamError, started: float, budget: _TokenBudget | None) -> None:
        now = record.ended = self.clock()
        record.status, record.error = error.status, type(error).__name__
        record.latency_ms = (now - started) * 1000
        state.last_error = error
        if budget is not None and not isinstance(error, UpstreamUnavailable):
            # The provider had the prompt: assume it was processed (billed) even though it failed.
            record.tokens = budget.prompt
            budget.spent += budget.prompt
        if not error.retryable:
            permit.release()  # the request was at fault, not the target
        elif isinstance(error, UpstreamRateLimited):
            permit.release()  # throttled is not unhealthy
            delay = parse_retry_after(error.headers)
            if delay is None:
                delay = full_jitter(state.tries[target.key] - 1, route.backoff.base_s, route.backoff.cap_s, self.rng)
            state.not_before[target.key] = now + delay  # past the deadline: effectively fail over at once
        elif isinstance(error, UpstreamAuthFailed):
            permit.failure()
            state.excluded.add(target.key)
        else:
            permit.failure()
            state.not_before[target.key] = now + full_jitter(
                state.tries[target.key] - 1, route.backoff.base_s, route.backoff.cap_s, self.rng)

    def _exhausted(self, call: Call, route: RouteSettings, state: _State) -> GatewayError:
        if call.attempt_count == 0:
            return NoTargetAvailable(
                "No target of this route can take the request now (circuit breakers open or providers at "
                "capacity); retry shortly.", headers=retry_after_headers(1.0))
        if state.last_error is not None and state.attempts_left == 0:
            return state.last_error
        if self.clock() >= state.deadline - _MIN_ATTEMPT_S:
            return DeadlineExceeded(
                f"The route's deadline of {route.deadline_s:g}s passed after {call.attempt_count} attempt(s); "
                f"last error: {state.last_error.message if state.last_error else 'none'}")
        assert state.last_error is not None
        return state.last_error


def _prepend(stream: ChatStream, first: bytes | None) -> ChatStream:
    async def chunks() -> AsyncGenerator[bytes, None]:
        if first is not None:
            yield first
        async for chunk in stream.chunks:
            yield chunk

    return ChatStream(chunks=chunks(), translator=stream.translator, close=stream.aclose)
