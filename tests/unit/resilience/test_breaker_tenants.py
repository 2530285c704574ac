"""One tenant cannot open a shared target's breaker for everyone (issue 12, item 14)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.resilience.breaker import BreakerConfig, BreakerRegistry, BreakerState, CircuitBreaker, Transition
from gateway.runtime import tenants_per_target
from gateway.settings import ConfigError, load_settings

TARGET = "openai/gpt-4o"
CONFIG = BreakerConfig(window_s=30, min_requests=10, failure_rate=0.5, consecutive_failures=5, cooldown_s=15,
                       half_open_probes=1, success_threshold=2, min_tenants=2)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def shared(tenants: int = 10, config: BreakerConfig = CONFIG) -> tuple[CircuitBreaker, Clock, list[Transition]]:
    clock = Clock()
    seen: list[Transition] = []
    registry = BreakerRegistry(config, clock=clock, wall_clock=clock, on_transition=seen.append,
                               tenants={TARGET: tenants})
    return registry.get(TARGET), clock, seen


def call(breaker: CircuitBreaker, tenant: str | None, ok: bool) -> bool:
    """One call of `tenant`; False when it was shed without a call."""
    permit = breaker.try_acquire(tenant)
    if permit is None:
        return False
    (permit.success if ok else permit.failure)()
    return True


def test_one_tenants_failures_shed_only_that_tenant() -> None:
    breaker, _, seen = shared()
    for _ in range(20):
        call(breaker, "evil", False)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.try_acquire("evil") is None  # shed
    assert call(breaker, "good", True)  # everyone else is served
    evil = breaker.tenant_breaker("evil")
    assert evil is not None and evil.state is BreakerState.OPEN
    assert [(t.tenant, t.to_state) for t in seen] == [("evil", BreakerState.OPEN)]
    assert seen[0].target == TARGET and "5 consecutive failures" in seen[0].reason


def test_a_failure_rate_of_one_tenant_mixed_with_others_successes_opens_nothing_shared() -> None:
    breaker, _, _ = shared()
    for _ in range(5):
        call(breaker, "evil", False)
        call(breaker, "good", True)
    snap = breaker.snapshot()
    assert snap["window_total"] >= CONFIG.min_requests and snap["failure_rate"] >= CONFIG.failure_rate
    assert breaker.state is BreakerState.CLOSED  # the shared rule alone would have opened it
    assert breaker.try_acquire("evil") is None and call(breaker, "good", True)


def test_a_hostile_tenant_and_one_chance_failure_of_another_open_nothing_shared() -> None:
    breaker, _, _ = shared()
    for _ in range(5):
        call(breaker, "evil", False)
    assert call(breaker, "good", False)  # one upstream hiccup: "good" is not tripped by it
    assert breaker.state is BreakerState.CLOSED and call(breaker, "good", True)


def test_an_upstream_down_for_everyone_opens_the_shared_breaker() -> None:
    breaker, _, seen = shared()
    for _ in range(5):
        call(breaker, "a", False)
    assert breaker.state is BreakerState.CLOSED
    for _ in range(5):
        call(breaker, "b", False)
    assert breaker.state is BreakerState.OPEN  # two tenants tripped: it is the target, not a tenant
    assert breaker.try_acquire("c") is None  # a tenant that never called is shed too, at once
    assert [(t.tenant, t.to_state) for t in seen] == [("a", "open"), ("b", "open"), (None, "open")]
    assert "from 2 tenants" in seen[-1].reason


def test_interleaved_failures_of_several_tenants_open_it_as_quickly() -> None:
    breaker, _, _ = shared()
    calls = {"a": 0, "b": 0, "c": 0}
    while breaker.state is BreakerState.CLOSED:
        for tenant in calls:
            calls[tenant] += call(breaker, tenant, False)
    # Open once two tenants made their five failing calls; no tenant made more than five.
    assert max(calls.values()) == CONFIG.consecutive_failures and sum(calls.values()) < 15


def test_a_target_one_tenant_can_reach_keeps_its_single_breaker() -> None:
    breaker, _, seen = shared(tenants=1)
    assert breaker.min_tenants == 1
    for _ in range(5):
        call(breaker, "solo", False)
    assert breaker.state is BreakerState.OPEN
    assert [(t.tenant, t.to_state) for t in seen] == [(None, "open")]
    assert breaker.snapshot()["tenants"] == []


def test_min_tenants_is_capped_by_the_tenants_that_reach_the_target() -> None:
    config = BreakerConfig(min_tenants=3)
    registry = BreakerRegistry(config, tenants={"p/a": 2, "p/b": 7})
    assert registry.get("p/a").min_tenants == 2
    assert registry.get("p/b").min_tenants == 3
    assert registry.get("p/unknown").min_tenants == 1
    assert BreakerRegistry(BreakerConfig(min_tenants=1), tenants={"p/b": 7}).get("p/b").min_tenants == 1


def test_a_shed_tenant_recovers_on_its_own_and_is_then_forgotten() -> None:
    breaker, clock, seen = shared()
    for _ in range(5):
        call(breaker, "evil", False)
    assert breaker.try_acquire("evil") is None
    clock.now += CONFIG.cooldown_s
    assert call(breaker, "evil", True)  # the probe
    assert call(breaker, "evil", True)
    evil = breaker.tenant_breaker("evil")
    assert evil is not None and evil.state is BreakerState.CLOSED
    assert [t.to_state for t in seen] == ["open", "half_open", "closed"]
    assert all(t.tenant == "evil" for t in seen)
    # No failure of its own left in the window: its state is dropped on its next call (memory stays bounded).
    clock.now += CONFIG.window_s
    assert call(breaker, "evil", True)
    assert breaker.tenant_breaker("evil") is None and breaker.snapshot()["tenants"] == []


def test_the_shared_breaker_recovers_through_any_tenants_probes() -> None:
    breaker, clock, _ = shared()
    for tenant in ("a", "b"):
        for _ in range(5):
            call(breaker, tenant, False)
    assert breaker.state is BreakerState.OPEN
    clock.now += 10  # the cooldown is not over: everyone is shed
    assert all(breaker.try_acquire(t) is None for t in ("a", "b", "c"))
    clock.now += 5
    assert call(breaker, "c", True) and call(breaker, "c", True)
    assert breaker.state is BreakerState.CLOSED and call(breaker, "d", True)


def _opened_by_an_outage(config: BreakerConfig = CONFIG) -> tuple[CircuitBreaker, Clock, list[Transition]]:
    breaker, clock, seen = shared(config=config)
    for tenant in ("a", "b"):
        for _ in range(5):
            call(breaker, tenant, False)
    assert breaker.state is BreakerState.OPEN
    clock.now += config.cooldown_s
    return breaker, clock, seen


def test_a_hostile_tenants_failed_probe_does_not_reopen_the_shared_breaker() -> None:
    config = BreakerConfig(window_s=30, min_requests=10, consecutive_failures=5, cooldown_s=15, half_open_probes=1,
                           success_threshold=2, min_tenants=2)
    breaker, _, seen = _opened_by_an_outage(config)
    assert call(breaker, "evil", False)  # the upstream is back, but "evil" poisons its probe
    assert breaker.state is BreakerState.HALF_OPEN
    evil = breaker.tenant_breaker("evil")
    assert evil is not None and evil.state is BreakerState.CLOSED  # one failure: not tripped yet
    assert call(breaker, "good", True) and call(breaker, "good", True)
    assert breaker.state is BreakerState.CLOSED
    assert [t.to_state for t in seen if t.tenant is None] == ["open", "half_open", "closed"]


def test_failed_probes_of_two_tenants_reopen_it() -> None:
    breaker, _, _ = _opened_by_an_outage()
    assert call(breaker, "c", False)
    assert breaker.state is BreakerState.HALF_OPEN
    assert call(breaker, "d", False)
    assert breaker.state is BreakerState.OPEN  # still down for everyone


def test_a_tenant_shed_on_its_own_breaker_gives_back_the_shared_probe_it_took() -> None:
    breaker, clock, _ = shared()
    for _ in range(5):
        call(breaker, "a", False)
    clock.now += 1
    for _ in range(5):
        call(breaker, "b", False)
    assert breaker.state is BreakerState.OPEN
    clock.now += CONFIG.cooldown_s  # both cooldowns are over
    probe = breaker.try_acquire("a")  # "a" holds the one probe of its own breaker and of the shared one
    assert probe is not None and breaker.state is BreakerState.HALF_OPEN
    probe.release()
    own = breaker.tenant_breaker("a")
    assert own is not None and own.state is BreakerState.HALF_OPEN
    held = own.try_acquire()  # its own probe is taken: "a" must be shed without keeping the shared probe
    assert held is not None
    assert breaker.try_acquire("a") is None
    assert breaker.snapshot()["probes_in_flight"] == 0 and call(breaker, "c", True)


def test_the_admin_view_lists_each_tenants_state_and_reset_clears_them() -> None:
    breaker, _, seen = shared()
    for _ in range(5):
        call(breaker, "evil", False)
    call(breaker, "good", True)
    snap = breaker.snapshot()
    assert snap["state"] == "closed" and snap["min_tenants"] == 2
    assert [(t["tenant"], t["state"], t["window_failures"]) for t in snap["tenants"]] == [("evil", "open", 5)]
    assert snap["tenants"][0]["target"] == TARGET
    breaker.reset()
    assert breaker.snapshot()["tenants"] == [] and call(breaker, "evil", True)
    assert [(t.tenant, t.to_state, t.reason) for t in seen][-1] == ("evil", "closed", "manual reset")


def test_outcomes_of_calls_granted_before_a_tenant_tripped_are_not_counted_twice() -> None:
    breaker, _, _ = shared()
    early = [breaker.try_acquire("evil") for _ in range(3)]
    for _ in range(5):
        call(breaker, "evil", False)
    evil = breaker.tenant_breaker("evil")
    assert evil is not None and evil.state is BreakerState.OPEN
    for permit in early:
        assert permit is not None
        permit.failure()  # told after it opened: dropped by the tenant's breaker
    assert evil.snapshot()["window_failures"] == 5 and breaker.state is BreakerState.CLOSED


def test_calls_without_a_tenant_share_one_breaker() -> None:
    breaker, _, _ = shared()
    for _ in range(20):
        call(breaker, None, False)
    # No tenant to attribute the failures to: nothing trips, nothing is shed (a model call always has one).
    assert breaker.state is BreakerState.CLOSED


def test_min_tenants_is_configured_and_checked(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "policies").mkdir()
    path = tmp_path / "config" / "gateway.yaml"
    path.write_text("resilience: {breaker: {min_tenants: 0}}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert "gateway.yaml: resilience.breaker.min_tenants: " in str(info.value) and "\n" not in str(info.value)
    path.write_text("providers: {m: {kind: mock}}\n"
                    "routes: {r1: {targets: [{provider: m, model: x}, {provider: m, model: y}]},\n"
                    "         r2: {targets: [{provider: m, model: y}]}}\n"
                    "resilience: {breaker: {min_tenants: 3}}\n")
    (tmp_path / "policies" / "tenants.yaml").write_text(
        "tenants: {a: {routes: [r1]}, b: {routes: [r2]}, c: {routes: ['*']}}\n")
    settings = load_settings(path, env={})
    assert settings.resilience.breaker.min_tenants == 3
    assert tenants_per_target(settings) == {"m/x": 2, "m/y": 3}
