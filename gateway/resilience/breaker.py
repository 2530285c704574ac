"""Circuit breakers: stop sending calls to an upstream target that keeps failing.

One breaker per target. Closed, it counts outcomes in a sliding window of time buckets and
opens when the failure rate (above a minimum volume) or a run of consecutive failures says the
target is unhealthy. Open, it refuses at once, so a dead upstream costs neither a round trip
nor a timeout. After a cooldown it lets a few probe calls through (half-open): enough
consecutive successes close it, one failure opens it again.

A target shared by tenants must not be taken away from all of them by one: a tenant whose
requests make the upstream fail (by their content) would otherwise open the breaker for
everyone. So where `min_tenants` (the config's, capped at the number of tenants that may reach
the target) is above one, a tenant that fails gets a breaker of its own on the target, with the
same rule; when it opens, only that tenant is shed. The target's shared breaker opens only when
its own rule says so (over every tenant's outcomes) and at least `min_tenants` tenants have
tripped their own breakers on it within the window: an upstream that is down for everyone does
that within a few calls of each tenant, a hostile tenant alone never does. Half-open, it opens
again only when probes of `min_tenants` tenants failed, so a hostile tenant cannot keep it open
by failing its probes either. A target only one
tenant may reach keeps the single breaker it always had. Memory: at most one tenant breaker
(~1 KB) per tenant that failed on a target within the window, and tenants come from the config;
one closed, whose window holds no failure any more, is dropped when its tenant next calls.

Everything runs inside one event loop, so there are no locks, and every call is O(1) (opening a
shared breaker counts the tenants that tripped: O(tenants)).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

log = logging.getLogger("gateway.breaker")


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_CLOSED, _OPEN, _HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    window_s: float = 30.0  # sliding window for the failure rate
    min_requests: int = 10  # volume the window needs before its rate may open the breaker
    failure_rate: float = 0.5  # open when failures/total in the window >= this (with min volume)
    consecutive_failures: int = 5  # ...or when this many failures come in a row
    cooldown_s: float = 15.0  # open -> half_open after this
    half_open_probes: int = 2  # at most this many concurrent trial calls while half-open
    success_threshold: int = 3  # consecutive successes in half-open to close
    # The window is this many buckets of window_s/buckets each; a bucket leaves the window
    # whole, so old outcomes are forgotten between (buckets-1)/buckets and 1 window later.
    buckets: int = 10
    # Distinct tenants whose own breakers must have tripped before a target's shared breaker opens
    # (capped per target at the number of tenants that may reach it; see the module docstring).
    min_tenants: int = 2

    def __post_init__(self) -> None:
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise ValueError("window_s must be a positive number")
        if not (math.isfinite(self.cooldown_s) and self.cooldown_s >= 0):
            raise ValueError("cooldown_s must be a number >= 0")
        if not 0 < self.failure_rate <= 1:
            raise ValueError("failure_rate must be in (0, 1]")
        for name in ("min_requests", "consecutive_failures", "half_open_probes", "success_threshold", "buckets",
                     "min_tenants"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


@dataclass(frozen=True, slots=True)
class Transition:
    target: str
    from_state: BreakerState
    to_state: BreakerState
    reason: str
    at: float  # wall clock (time.time()), for logs and the admin API
    failure_rate: float  # of the window at the moment of the transition
    window_total: int
    tenant: str | None = None  # a tenant's own breaker on the target; None: the target's shared breaker


class Permit:
    """The right to make one call through a breaker.

    Exactly one of success(), failure() or release() reports how the call went; any later call
    is ignored, so a `finally: permit.release()` after a verdict is safe.
    """

    __slots__ = ("_breaker", "_done", "_generation", "_own", "probe", "tenant")

    def __init__(self, breaker: CircuitBreaker, generation: int, probe: bool, tenant: str | None = None) -> None:
        self._breaker = breaker
        self._generation = generation
        self._done = False
        self.probe = probe  # a half-open trial call: worth a log line when it ends
        self.tenant = tenant  # whose call it is: its failures count against that tenant
        self._own: Permit | None = None  # the permit of the tenant's own breaker on the target, if it has one

    def success(self) -> None:
        if not self._done:
            self._done = True
            if self._own is not None:
                self._own.success()
            self._breaker._complete(self._generation, True)

    def failure(self) -> None:
        if not self._done:
            self._done = True
            breaker = self._breaker
            if self._own is not None:
                self._own.failure()
            elif self.tenant is not None and breaker.min_tenants > 1:
                breaker._tenant_failed(self.tenant)
            breaker._complete(self._generation, False, self.tenant)

    def release(self) -> None:
        """End the call without a health verdict (client cancelled, request-level error)."""
        if not self._done:
            self._done = True
            if self._own is not None:
                self._own.release()
            self._breaker._complete(self._generation, None)


class CircuitBreaker:
    __slots__ = (
        "_bucket_s", "_clock", "_consec_fail", "_consec_ok", "_epoch", "_fail", "_failed_mono", "_failures",
        "_generation", "_on_transition", "_opened_mono", "_opened_wall", "_probes", "_probes_failed", "_state",
        "_tenants", "_total", "_totals", "_transitions", "_wall_clock", "config", "min_tenants", "target", "tenant",
    )

    def __init__(
        self,
        target: str,
        config: BreakerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_transition: Callable[[Transition], None] | None = None,
        min_tenants: int = 1,
        tenant: str | None = None,
    ) -> None:
        self.target = target
        self.config = config
        # 1: one breaker for every caller. More: tenants that fail get breakers of their own (in
        # _tenants), and this one opens only when that many of them tripped (module docstring).
        self.min_tenants = min_tenants
        self.tenant = tenant
        self._tenants: dict[str, CircuitBreaker] = {}
        self._failed_mono = -math.inf  # when the last failure was recorded
        self._probes_failed: set[str] = set()  # tenants whose probes failed in this half-open spell
        self._clock = clock
        self._wall_clock = wall_clock
        self._on_transition = on_transition
        self._state = _CLOSED
        # Bumped on every change of state (and on reset): a permit from an older generation
        # describes the target as it was before, so its outcome is dropped.
        self._generation = 0
        self._transitions = 0
        self._bucket_s = config.window_s / config.buckets
        self._totals = [0] * config.buckets
        self._fail = [0] * config.buckets
        self._epoch = self._epoch_of(clock())  # bucket number of the newest bucket
        self._total = 0  # running sums over the live buckets
        self._failures = 0
        self._consec_fail = 0
        self._consec_ok = 0
        self._probes = 0
        self._opened_mono = 0.0
        self._opened_wall: float | None = None

    # -- the hot path ------------------------------------------------------------------------

    def try_acquire(self, tenant: str | None = None) -> Permit | None:
        """A permit for `tenant` to call the target, or None to skip it without a network call."""
        if self._state is _CLOSED and not self._tenants:
            return Permit(self, self._generation, False, tenant)
        if tenant is None or not self._tenants:
            return self._acquire(tenant)
        own = self._tenants.get(tenant)
        if own is None:
            return self._acquire(tenant)
        if own._state is _CLOSED and self._clock() - own._failed_mono >= self.config.window_s:
            del self._tenants[tenant]  # no failure of this tenant is left in the window: nothing to keep
            return self._acquire(tenant)
        permit = self._acquire(tenant)
        if permit is None:
            return None
        own_permit = own._acquire(None)
        if own_permit is None:  # this tenant is shed; the others are not
            permit.release()
            return None
        permit._own = own_permit
        return permit

    def _acquire(self, tenant: str | None) -> Permit | None:
        """try_acquire on this breaker's own state, whoever else has a say."""
        state = self._state
        if state is _CLOSED:
            return Permit(self, self._generation, False, tenant)
        transition = None
        if state is _OPEN:
            now = self._clock()
            if now - self._opened_mono < self.config.cooldown_s:
                return None
            transition = self._move(_HALF_OPEN, "cooldown elapsed", now)
        if self._probes >= self.config.half_open_probes:
            permit = None
        else:
            self._probes += 1
            permit = Permit(self, self._generation, True, tenant)
        if transition is not None:
            # After the probe is granted, so a callback that resets the breaker sees it.
            self._emit(transition)
        return permit

    def _complete(self, generation: int, ok: bool | None, tenant: str | None = None) -> None:
        if generation != self._generation:
            return
        cfg = self.config
        if self._state is _HALF_OPEN:
            self._probes -= 1
            if ok is None:
                return
            now = self._clock()
            if not ok:
                self._failed_mono = now
                if self.min_tenants > 1 and tenant is not None:
                    # One tenant's failed probe sheds that tenant (its own breaker); the target
                    # opens again only when probes of min_tenants tenants failed.
                    failed = self._probes_failed
                    failed.add(tenant)
                    if len(failed) < self.min_tenants:
                        return
                self._emit(self._move(_OPEN, "probe failed", now))
                return
            self._consec_ok += 1
            if self._consec_ok >= cfg.success_threshold:
                self._emit(self._move(_CLOSED, f"{self._consec_ok} consecutive successes", now))
            return
        # Closed: an open breaker issues no permits, and opening bumped the generation.
        if ok is None:
            return
        now = self._clock()
        i = self._advance(now)
        self._totals[i] += 1
        self._total += 1
        if ok:
            self._consec_fail = 0
            return
        self._fail[i] += 1
        self._failures += 1
        self._failed_mono = now
        self._consec_fail += 1
        total = self._total
        if total >= cfg.min_requests and self._failures / total >= cfg.failure_rate:
            reason = f"failure rate {self._failures / total:.0%} over {total} requests in {cfg.window_s:g}s"
        elif self._consec_fail >= cfg.consecutive_failures:
            reason = f"{self._consec_fail} consecutive failures"
        else:
            return
        if self.min_tenants > 1:
            tripped = self._tenants_tripped(now)
            if tripped < self.min_tenants:
                return  # the tenants that fail are shed on their own breakers
            reason += f" from {tripped} tenants"
        self._emit(self._move(_OPEN, reason, now))

    def _tenant_failed(self, tenant: str) -> None:
        """A failure of a tenant that had no breaker of its own here when its call began: it has now."""
        own = self._tenants.get(tenant)
        if own is None:
            own = self._tenants[tenant] = CircuitBreaker(
                self.target, self.config, clock=self._clock, wall_clock=self._wall_clock,
                on_transition=self._on_transition, tenant=tenant)
        if own._state is _CLOSED:  # else it opened since this call began: the failure is already told
            own._complete(own._generation, False)

    def _tenants_tripped(self, now: float) -> int:
        """Tenants whose own breakers on the target are open or half-open, or opened within the window."""
        window_s = self.config.window_s
        n = 0
        for own in self._tenants.values():
            if own._state is not _CLOSED or (own._transitions and now - own._opened_mono < window_s):
                n += 1
        return n

    # -- reads (no side effects) -------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker stays "open" past its cooldown until try_acquire()."""
        return self._state

    @property
    def retry_in_s(self) -> float:
        """Seconds until an open breaker lets a probe through; 0.0 unless open."""
        if self._state is not _OPEN:
            return 0.0
        return max(0.0, self.config.cooldown_s - (self._clock() - self._opened_mono))

    def snapshot(self) -> dict[str, Any]:
        now = self._clock()
        total, failures = self._window(now)
        is_open = self._state is _OPEN
        out: dict[str, Any] = {"target": self.target}
        if self.tenant is not None:
            out["tenant"] = self.tenant
        out.update({
            "state": self._state.value,
            "failure_rate": round(failures / total, 4) if total else 0.0,
            "window_total": total,
            "window_failures": failures,
            "consecutive_failures": self._consec_fail,
            "consecutive_successes": self._consec_ok,
            "opened_at": self._opened_wall,
            "retry_in_s": round(max(0.0, self.config.cooldown_s - (now - self._opened_mono)), 3) if is_open else None,
            "probes_in_flight": self._probes,
            "transitions": self._transitions,
        })
        if self.tenant is None:
            out["min_tenants"] = self.min_tenants
            # The tenants with a breaker of their own here (they failed within the window): who is shed.
            out["tenants"] = [self._tenants[t].snapshot() for t in sorted(self._tenants)]
        return out

    def tenant_breaker(self, tenant: str) -> CircuitBreaker | None:
        return self._tenants.get(tenant)

    # -- admin -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Force closed and forget the window (and every tenant's own state on the target); outcomes
        of calls in flight are dropped."""
        for own in self._tenants.values():
            own.reset()
        self._tenants.clear()
        if self._state is not _CLOSED:
            self._emit(self._move(_CLOSED, "manual reset", self._clock()))
            return
        self._generation += 1
        self._clear_window()
        self._consec_fail = 0

    # -- internals ---------------------------------------------------------------------------

    def _move(self, to: BreakerState, reason: str, now: float) -> Transition:
        """Change state; returns the Transition for the caller to emit once it is done mutating."""
        total, failures = self._window(now)
        transition = Transition(
            target=self.target, from_state=self._state, to_state=to, reason=reason, at=self._wall_clock(),
            failure_rate=failures / total if total else 0.0, window_total=total, tenant=self.tenant,
        )
        self._state = to
        self._generation += 1
        self._transitions += 1
        self._probes = 0
        self._consec_ok = 0
        self._probes_failed.clear()
        if to is _OPEN:
            self._opened_mono = now
            self._opened_wall = transition.at
        elif to is _CLOSED:
            # A clean slate: the failures that opened the breaker must not count against it again.
            self._clear_window()
            self._consec_fail = 0
            self._opened_wall = None
        return transition

    def _emit(self, transition: Transition) -> None:
        if self._on_transition is None:
            return
        try:
            self._on_transition(transition)
        except Exception:
            # A broken metrics or log hook must not fail the request that tripped the breaker.
            log.exception("breaker %s (tenant %s): on_transition callback failed", self.target, self.tenant)

    def _epoch_of(self, now: float) -> int:
        return math.floor(now / self._bucket_s)

    def _advance(self, now: float) -> int:
        """Slide the window to `now`, dropping buckets that left it; returns the current bucket index."""
        n = self.config.buckets
        epoch = self._epoch_of(now)
        if epoch > self._epoch:
            if epoch - self._epoch >= n:
                self._clear_window()
            else:
                totals, fail = self._totals, self._fail
                for e in range(self._epoch + 1, epoch + 1):
                    i = e % n
                    self._total -= totals[i]
                    self._failures -= fail[i]
                    totals[i] = fail[i] = 0
            self._epoch = epoch
        # A clock that steps back (only fake ones do) records into the newest bucket.
        return self._epoch % n

    def _window(self, now: float) -> tuple[int, int]:
        """(total, failures) over the buckets still live at `now`, without sliding the window."""
        n = self.config.buckets
        gone = self._epoch_of(now) - self._epoch  # buckets that slid out since the last record
        if gone <= 0:
            return self._total, self._failures
        if gone >= n:
            return 0, 0
        total, failures = self._total, self._failures
        for e in range(self._epoch + 1, self._epoch + gone + 1):
            i = e % n
            total -= self._totals[i]
            failures -= self._fail[i]
        return total, failures

    def _clear_window(self) -> None:
        n = self.config.buckets
        self._totals[:] = [0] * n
        self._fail[:] = [0] * n
        self._total = self._failures = 0


class BreakerRegistry:
    """One breaker per target, made on first use with the shared config and hooks.

    `tenants`: how many tenants may reach each target (from the config); a target's breaker needs
    min(config.min_tenants, that many) tenants to trip before it opens for all. A target missing
    from it counts as reachable by one tenant: its breaker is shared by every caller, as before."""

    __slots__ = ("_breakers", "_clock", "_on_transition", "_tenants", "_wall_clock", "config")

    def __init__(
        self,
        config: BreakerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_transition: Callable[[Transition], None] | None = None,
        tenants: Mapping[str, int] | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._wall_clock = wall_clock
        self._on_transition = on_transition
        self._tenants = dict(tenants or {})
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, target: str) -> CircuitBreaker:
        breaker = self._breakers.get(target)
        if breaker is None:
            breaker = self._breakers[target] = CircuitBreaker(
                target, self.config, clock=self._clock, wall_clock=self._wall_clock,
                on_transition=self._on_transition,
                min_tenants=max(1, min(self.config.min_tenants, self._tenants.get(target, 1))),
            )
        return breaker

    def __contains__(self, target: object) -> bool:
        return target in self._breakers

    def snapshot(self) -> list[dict[str, Any]]:
        return [self._breakers[t].snapshot() for t in sorted(self._breakers)]

    def reset(self, target: str) -> bool:
        """Reset one breaker; False when no call has gone to that target yet."""
        breaker = self._breakers.get(target)
        if breaker is None:
            return False
        breaker.reset()
        return True
