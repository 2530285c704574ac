from __future__ import annotations

import json
import logging
import random

import pytest

from gateway.resilience.breaker import (
    BreakerConfig,
    BreakerRegistry,
    BreakerState,
    CircuitBreaker,
    Permit,
    Transition,
)

WALL = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(config: BreakerConfig | None = None, start: float = 1000.0, **kw: object,
         ) -> tuple[CircuitBreaker, Clock, list[Transition]]:
    clock = Clock(start)
    seen: list[Transition] = []
    breaker = CircuitBreaker(
        "openai/gpt-4o", config or BreakerConfig(**kw),  # type: ignore[arg-type]
        clock=clock, wall_clock=lambda: WALL + clock.now, on_transition=seen.append,
    )
    return breaker, clock, seen


def call(breaker: CircuitBreaker, ok: bool) -> None:
    permit = breaker.try_acquire()
    assert permit is not None
    (permit.success if ok else permit.failure)()


def trip(breaker: CircuitBreaker) -> None:
    while breaker.state is BreakerState.CLOSED:
        call(breaker, False)
    assert breaker.state is BreakerState.OPEN


# -- closed -> open ----------------------------------------------------------------------------


def test_closed_breaker_grants_permits_and_successes_keep_it_closed() -> None:
    breaker, _, seen = make()
    for _ in range(100):
        call(breaker, True)
    permit = breaker.try_acquire()
    assert isinstance(permit, Permit) and not permit.probe
    assert breaker.state is BreakerState.CLOSED and seen == []
    assert breaker.snapshot()["window_total"] == 100


def test_failure_rate_opens_once_min_volume_is_reached() -> None:
    breaker, clock, seen = make(min_requests=10, failure_rate=0.5, consecutive_failures=100)
    for i in range(9):  # alternate, so no run of failures forms
        call(breaker, i % 2 == 0)  # 5 successes, 4 failures
    assert breaker.state is BreakerState.CLOSED
    call(breaker, False)  # 5/10 = 50%
    assert breaker.state is BreakerState.OPEN
    [t] = seen
    assert (t.target, t.from_state, t.to_state) == ("openai/gpt-4o", BreakerState.CLOSED, BreakerState.OPEN)
    assert t.reason == "failure rate 50% over 10 requests in 30s"
    assert t.failure_rate == 0.5 and t.window_total == 10 and t.at == WALL + clock.now


def test_failure_rate_reason_rounds_the_percentage() -> None:
    breaker, _, seen = make(min_requests=13, failure_rate=0.6, consecutive_failures=100)
    for ok in [True, False] * 5 + [False, False, False]:  # 8 failures of 13 = 61.5%
        call(breaker, ok)
    assert seen[0].reason == "failure rate 62% over 13 requests in 30s"


def test_high_failure_rate_below_min_volume_does_not_open() -> None:
    breaker, _, seen = make(min_requests=10, failure_rate=0.5, consecutive_failures=100)
    for ok in [False, True, False, False, True, False]:  # 67% over 6 requests
        call(breaker, ok)
    assert breaker.state is BreakerState.CLOSED and seen == []
    snap = breaker.snapshot()
    assert (snap["window_total"], snap["window_failures"], snap["failure_rate"]) == (6, 4, 0.6667)


def test_rate_just_below_threshold_stays_closed() -> None:
    breaker, _, _ = make(min_requests=10, failure_rate=0.5, consecutive_failures=100)
    for ok in [True, False] * 4 + [True, True, False]:  # 5 of 11 = 45%
        call(breaker, ok)
    assert breaker.state is BreakerState.CLOSED


def test_consecutive_failures_open_below_min_volume() -> None:
    breaker, _, seen = make(min_requests=100, consecutive_failures=5)
    for _ in range(4):
        call(breaker, False)
    assert breaker.state is BreakerState.CLOSED
    call(breaker, False)
    assert breaker.state is BreakerState.OPEN
    assert seen[0].reason == "5 consecutive failures" and seen[0].window_total == 5


def test_a_success_breaks_the_run_of_failures() -> None:
    breaker, _, _ = make(min_requests=100, consecutive_failures=5)
    for ok in [False] * 4 + [True] + [False] * 4:
        call(breaker, ok)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot()["consecutive_failures"] == 4


def test_release_in_closed_state_counts_nothing() -> None:
    breaker, _, _ = make()
    permit = breaker.try_acquire()
    assert permit is not None
    permit.release()
    assert breaker.snapshot()["window_total"] == 0


# -- the sliding window ----------------------------------------------------------------------


def test_window_expiry_forgets_old_failures() -> None:
    breaker, clock, _ = make(window_s=30, min_requests=4, failure_rate=0.5, consecutive_failures=100)
    for _ in range(3):
        call(breaker, False)
    call(breaker, True)
    call(breaker, True)  # 3/5 failures would open with one more failure of 6: 4/6
    clock.advance(31)
    assert breaker.snapshot()["window_total"] == 0  # reads see the slid window too
    for ok in [False, True, True, True]:
        call(breaker, ok)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot()["window_total"] == 4


def test_window_slides_bucket_by_bucket() -> None:
    # Buckets are aligned on multiples of their width: [0, 3), [3, 6), ...
    breaker, clock, _ = make(window_s=30, buckets=10, min_requests=1000, consecutive_failures=1000, start=0.0)
    call(breaker, False)  # bucket [0, 3)
    clock.now = 4.0
    call(breaker, True)  # bucket [3, 6)
    clock.now = 29.9
    assert breaker.snapshot()["window_total"] == 2
    clock.now = 30.0  # bucket [0, 3) leaves the window
    snap = breaker.snapshot()
    assert (snap["window_total"], snap["window_failures"]) == (1, 0)
    clock.now = 33.0
    assert breaker.snapshot()["window_total"] == 0


def test_window_matches_a_naive_model() -> None:
    rng = random.Random(7)
    cfg = BreakerConfig(window_s=10, buckets=5, min_requests=10**9, consecutive_failures=10**9)
    clock = Clock(0.0)
    breaker = CircuitBreaker("t", cfg, clock=clock)
    events: list[tuple[float, bool]] = []
    bucket = cfg.window_s / cfg.buckets
    for _ in range(3000):
        clock.advance(rng.choice([0.0, 0.01, 0.3, 1.0, 2.5, 7.0, 13.0]))
        if rng.random() < 0.8:
            ok = rng.random() < 0.5
            call(breaker, ok)
            events.append((clock.now, ok))
        now_bucket = int(clock.now // bucket)
        events = [(t, ok) for t, ok in events if int(t // bucket) > now_bucket - cfg.buckets]
        live = [ok for _, ok in events]
        snap = breaker.snapshot()
        assert (snap["window_total"], snap["window_failures"]) == (len(live), live.count(False))


def test_clock_stepping_back_records_into_the_newest_bucket() -> None:
    breaker, clock, _ = make(min_requests=1000, consecutive_failures=1000)
    call(breaker, True)
    clock.advance(-100)
    call(breaker, False)
    assert breaker.snapshot()["window_total"] == 2


# -- open -> half-open -> closed / open ------------------------------------------------------


def test_open_refuses_until_cooldown_and_reads_have_no_side_effects() -> None:
    breaker, clock, seen = make(cooldown_s=15)
    trip(breaker)
    assert breaker.try_acquire() is None
    assert breaker.retry_in_s == 15.0
    clock.advance(10)
    assert breaker.try_acquire() is None
    assert breaker.retry_in_s == pytest.approx(5.0)
    clock.advance(6)
    # Past the cooldown, reads still say open (with nothing left to wait) until try_acquire().
    assert breaker.state is BreakerState.OPEN and breaker.retry_in_s == 0.0
    assert breaker.snapshot()["state"] == "open" and breaker.snapshot()["retry_in_s"] == 0.0
    assert len(seen) == 1
    permit = breaker.try_acquire()
    assert permit is not None and permit.probe
    assert breaker.state is BreakerState.HALF_OPEN
    assert seen[-1].reason == "cooldown elapsed"
    assert (seen[-1].from_state, seen[-1].to_state) == (BreakerState.OPEN, BreakerState.HALF_OPEN)


def test_half_open_limits_concurrent_probes() -> None:
    breaker, clock, _ = make(half_open_probes=2)
    trip(breaker)
    clock.advance(15)
    p1, p2 = breaker.try_acquire(), breaker.try_acquire()
    assert p1 is not None and p2 is not None
    assert breaker.try_acquire() is None
    assert breaker.snapshot()["probes_in_flight"] == 2
    p1.success()
    p3 = breaker.try_acquire()
    assert p3 is not None and p3.probe
    assert breaker.try_acquire() is None


def test_release_frees_a_probe_slot_without_counting() -> None:
    breaker, clock, _ = make(half_open_probes=1, success_threshold=1)
    trip(breaker)
    clock.advance(15)
    probe = breaker.try_acquire()
    assert probe is not None and breaker.try_acquire() is None
    probe.release()
    snap = breaker.snapshot()
    assert snap["state"] == "half_open" and snap["probes_in_flight"] == 0 and snap["consecutive_successes"] == 0
    probe = breaker.try_acquire()
    assert probe is not None
    probe.success()
    assert breaker.state is BreakerState.CLOSED


def test_a_failed_probe_reopens_with_a_new_cooldown() -> None:
    breaker, clock, seen = make(cooldown_s=15)
    trip(breaker)
    first_opened = breaker.snapshot()["opened_at"]
    clock.advance(20)
    probe = breaker.try_acquire()
    other = breaker.try_acquire()
    assert probe is not None and other is not None
    probe.failure()
    assert breaker.state is BreakerState.OPEN
    assert seen[-1].reason == "probe failed" and seen[-1].from_state is BreakerState.HALF_OPEN
    snap = breaker.snapshot()
    assert snap["opened_at"] == WALL + clock.now != first_opened
    assert snap["retry_in_s"] == 15.0 and snap["probes_in_flight"] == 0
    other.success()  # the other probe belongs to the half-open period that just ended
    assert breaker.state is BreakerState.OPEN
    clock.advance(14.9)
    assert breaker.try_acquire() is None
    clock.advance(0.1)
    assert breaker.try_acquire() is not None


def test_consecutive_successes_close_and_clear_the_window() -> None:
    breaker, clock, seen = make(half_open_probes=2, success_threshold=3, min_requests=2)
    trip(breaker)
    clock.advance(15)
    for _ in range(2):
        call(breaker, True)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.snapshot()["consecutive_successes"] == 2
    call(breaker, True)
    assert breaker.state is BreakerState.CLOSED
    assert seen[-1].reason == "3 consecutive successes"
    assert [t.to_state for t in seen] == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]
    snap = breaker.snapshot()
    assert snap["window_total"] == 0 and snap["consecutive_failures"] == 0 and snap["opened_at"] is None
    call(breaker, False)  # one failure of a fresh window: below min volume, not a run
    assert breaker.state is BreakerState.CLOSED


def test_success_released_probe_then_failure_still_reopens() -> None:
    breaker, clock, _ = make(half_open_probes=1, success_threshold=3)
    trip(breaker)
    clock.advance(15)
    call(breaker, True)
    call(breaker, True)
    call(breaker, False)
    assert breaker.state is BreakerState.OPEN


# -- permits -------------------------------------------------------------------------------


def test_double_completion_is_a_no_op() -> None:
    breaker, _, _ = make(min_requests=1000, consecutive_failures=2)
    permit = breaker.try_acquire()
    assert permit is not None
    permit.failure()
    permit.failure()
    permit.success()
    permit.release()
    snap = breaker.snapshot()
    assert (snap["window_total"], snap["window_failures"], snap["consecutive_failures"]) == (1, 1, 1)
    assert breaker.state is BreakerState.CLOSED


def test_double_completion_of_a_probe_frees_one_slot_only() -> None:
    breaker, clock, _ = make(half_open_probes=2)
    trip(breaker)
    clock.advance(15)
    p1, p2 = breaker.try_acquire(), breaker.try_acquire()
    assert p1 is not None and p2 is not None
    p1.release()
    p1.release()
    p1.success()
    assert breaker.snapshot()["probes_in_flight"] == 1
    assert breaker.snapshot()["consecutive_successes"] == 0


def test_outcomes_of_calls_admitted_before_a_transition_are_dropped() -> None:
    breaker, clock, _ = make(consecutive_failures=3, success_threshold=2, half_open_probes=2)
    in_flight = [p for p in (breaker.try_acquire() for _ in range(10)) if p is not None]
    assert len(in_flight) == 10
    for p in in_flight[:3]:
        p.failure()
    assert breaker.state is BreakerState.OPEN
    for p in in_flight[3:6]:
        p.failure()  # would otherwise count while open
    clock.advance(15)
    probe = breaker.try_acquire()
    assert probe is not None
    for p in in_flight[6:]:
        p.success()  # closed-era successes are not probe successes
    snap = breaker.snapshot()
    assert snap["state"] == "half_open" and snap["consecutive_successes"] == 0 and snap["probes_in_flight"] == 1


# -- callbacks -----------------------------------------------------------------------------


def test_a_raising_callback_is_contained_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    def boom(_: Transition) -> None:
        raise RuntimeError("metrics down")

    clock = Clock()
    breaker = CircuitBreaker("t", BreakerConfig(consecutive_failures=1), clock=clock, on_transition=boom)
    with caplog.at_level(logging.ERROR, logger="gateway.breaker"):
        call(breaker, False)
        clock.advance(15)
        assert breaker.try_acquire() is not None
    assert breaker.state is BreakerState.HALF_OPEN
    records = [r for r in caplog.records if r.name == "gateway.breaker"]
    assert len(records) == 2 and records[0].exc_info is not None and "t" in records[0].getMessage()
    assert breaker.snapshot()["transitions"] == 2


def test_callback_may_reenter_the_breaker() -> None:
    clock = Clock()
    seen: list[dict[str, object]] = []
    breaker: CircuitBreaker

    def hook(t: Transition) -> None:
        seen.append(breaker.snapshot())  # consistent state at emit time
        if t.to_state is BreakerState.HALF_OPEN:
            breaker.reset()

    breaker = CircuitBreaker("t", BreakerConfig(consecutive_failures=1), clock=clock, on_transition=hook)
    call(breaker, False)
    assert seen[0]["state"] == "open" and seen[0]["window_failures"] == 1
    clock.advance(15)
    probe = breaker.try_acquire()
    assert probe is not None
    assert seen[1]["state"] == "half_open" and seen[1]["probes_in_flight"] == 1
    assert breaker.state is BreakerState.CLOSED and breaker.snapshot()["probes_in_flight"] == 0
    probe.failure()  # granted before the reset: dropped
    assert breaker.state is BreakerState.CLOSED and breaker.snapshot()["window_total"] == 0


def test_no_callback_is_fine() -> None:
    breaker = CircuitBreaker("t", BreakerConfig(consecutive_failures=1), clock=Clock())
    call(breaker, False)
    assert breaker.state is BreakerState.OPEN


# -- snapshot and reset ----------------------------------------------------------------------


def test_snapshot_fields_are_json_able() -> None:
    breaker, clock, _ = make(consecutive_failures=2, cooldown_s=15)
    snap = breaker.snapshot()
    assert snap == {
        "target": "openai/gpt-4o", "state": "closed", "failure_rate": 0.0, "window_total": 0,
        "window_failures": 0, "consecutive_failures": 0, "consecutive_successes": 0, "opened_at": None,
        "retry_in_s": None, "probes_in_flight": 0, "transitions": 0, "min_tenants": 1, "tenants": [],
    }
    call(breaker, True)
    call(breaker, False)
    call(breaker, False)
    clock.advance(5)
    snap = breaker.snapshot()
    assert snap["state"] == "open" and snap["failure_rate"] == 0.6667
    assert (snap["window_total"], snap["window_failures"], snap["consecutive_failures"]) == (3, 2, 2)
    assert snap["opened_at"] == WALL + clock.now - 5 and snap["retry_in_s"] == 10.0
    assert snap["transitions"] == 1
    json.dumps(snap)


def test_reset_from_open_emits_a_transition() -> None:
    breaker, _, seen = make()
    trip(breaker)
    breaker.reset()
    assert breaker.state is BreakerState.CLOSED
    assert seen[-1].reason == "manual reset" and seen[-1].from_state is BreakerState.OPEN
    snap = breaker.snapshot()
    assert snap["window_total"] == 0 and snap["opened_at"] is None and snap["retry_in_s"] is None


def test_reset_from_half_open_drops_probes() -> None:
    breaker, clock, seen = make()
    trip(breaker)
    clock.advance(15)
    probe = breaker.try_acquire()
    assert probe is not None
    breaker.reset()
    assert seen[-1].from_state is BreakerState.HALF_OPEN and seen[-1].to_state is BreakerState.CLOSED
    assert breaker.snapshot()["probes_in_flight"] == 0
    probe.failure()
    assert breaker.state is BreakerState.CLOSED


def test_reset_while_closed_clears_quietly() -> None:
    breaker, _, seen = make(consecutive_failures=3)
    permit = breaker.try_acquire()
    call(breaker, False)
    call(breaker, False)
    breaker.reset()
    assert seen == []
    snap = breaker.snapshot()
    assert snap["window_total"] == 0 and snap["consecutive_failures"] == 0 and snap["transitions"] == 0
    assert permit is not None
    permit.failure()  # in flight across the reset: forgotten
    call(breaker, False)
    call(breaker, False)
    assert breaker.state is BreakerState.CLOSED


# -- config and registry ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    {"window_s": 0}, {"window_s": float("nan")}, {"cooldown_s": -1}, {"failure_rate": 0}, {"failure_rate": 1.5},
    {"min_requests": 0}, {"consecutive_failures": 0}, {"half_open_probes": 0}, {"success_threshold": 0},
    {"buckets": 0},
])
def test_config_rejects_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BreakerConfig(**bad)  # type: ignore[arg-type]


def test_zero_cooldown_probes_at_once() -> None:
    breaker, _, _ = make(cooldown_s=0, consecutive_failures=1)
    call(breaker, False)
    assert breaker.try_acquire() is not None and breaker.state is BreakerState.HALF_OPEN


def test_registry_creates_lazily_and_reports_sorted() -> None:
    clock = Clock()
    seen: list[Transition] = []
    registry = BreakerRegistry(BreakerConfig(consecutive_failures=1), clock=clock, on_transition=seen.append)
    assert registry.snapshot() == [] and "b" not in registry
    b = registry.get("b")
    assert registry.get("b") is b and "b" in registry
    registry.get("a")
    assert [s["target"] for s in registry.snapshot()] == ["a", "b"]
    call(b, False)
    assert seen[0].target == "b"
    assert registry.reset("b") is True and b.state is BreakerState.CLOSED
    assert seen[-1].reason == "manual reset"
    assert registry.reset("nope") is False and "nope" not in registry
