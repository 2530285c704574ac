"""The drill's traffic shape, shared by the Locust shape (locustfile.py) and the report (run.py).

Kept free of Locust imports: importing locust monkeypatches the process with gevent, which
run.py (plain threads and subprocesses) must not get.
"""

from __future__ import annotations

import math

BURST_EVERY_S = 15.0  # one burst per period ...
BURST_LEN_S = 3.0  # ... in its last seconds, so the first burst meets a warmed-up gateway
BURST_FACTOR = 2.0  # a burst doubles the baseline
USER_RPS = 2.0  # most requests one simulated user sends per second (constant_throughput)


def in_burst(t: float) -> bool:
    return t % BURST_EVERY_S >= BURST_EVERY_S - BURST_LEN_S


def target_rps(t: float, baseline_rps: float) -> float:
    return baseline_rps * (BURST_FACTOR if in_burst(t) else 1.0)


def users_for(rps: float) -> int:
    """Users needed for `rps` at USER_RPS each; with the per-user rate rps / users the product is exact."""
    return max(1, math.ceil(rps / USER_RPS))


def planned_requests(duration_s: float, baseline_rps: float, step_s: float = 0.01) -> float:
    """Requests the shape asks for over the whole drill (the integral of target_rps)."""
    steps = int(duration_s / step_s)
    return sum(target_rps(i * step_s, baseline_rps) for i in range(steps)) * step_s
