"""The loop metrics expose exactly what prometheus_client's own Counter and Histogram would."""

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.observability.loop_metrics import LoopCounter, LoopHistogram
from gateway.observability.metrics import Metrics

BUCKETS = (0.005, 0.01, 0.025, 0.1, 1, 10)
VALUES = [0.0, 0.004, 0.005, 0.0051, 0.01, 0.3, 1.0, 9.99, 10.0, 10.01, 1e9, -1.0]


def _exposition(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_counter_and_histogram_render_like_prometheus_client() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    counter = Counter("x_requests", "Requests.", ["route", "status"], registry=theirs)
    histogram = Histogram("x_seconds", "Seconds.", ["route"], buckets=BUCKETS, registry=theirs)
    loop_counter = LoopCounter("x_requests", "Requests.", ["route", "status"])
    loop_histogram = LoopHistogram("x_seconds", "Seconds.", ["route"], BUCKETS)
    ours.register(loop_counter)
    ours.register(loop_histogram)
    for i, value in enumerate(VALUES):
        route = "a" if i % 3 else "b"
        counter.labels(route, "200").inc(i)
        loop_counter.inc((route, "200"), i)
        histogram.labels(route).observe(value)
        loop_histogram.observe((route,), value)
    assert _exposition(ours) == _exposition(theirs)


def test_buckets_must_increase() -> None:
    with pytest.raises(ValueError):
        LoopHistogram("x", "x", [], (1, 1, 2))


def test_a_recorded_request_shows_on_the_metrics_page() -> None:
    metrics = Metrics()
    metrics.requests.inc(("chat", "acme", "200"))
    metrics.latency.observe(("chat",), 0.02)
    metrics.tokens.inc(("chat", "prompt"), 42)
    page = metrics.render().decode()
    assert 'gateway_requests_total{route="chat",status="200",tenant="acme"} 1.0' in page
    assert 'gateway_request_duration_seconds_bucket{le="0.025",route="chat"} 1.0' in page
    assert 'gateway_request_duration_seconds_count{route="chat"} 1.0' in page
    assert 'gateway_tokens_total{kind="prompt",route="chat"} 42.0' in page
