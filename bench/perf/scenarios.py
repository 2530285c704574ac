"""The gateway rows of the perf bench, one scenario each: what it adds to the default pipeline is visible as the
difference to the row above it.

EXTENSION POINT: a later stage (cache hit, semantic lookup, PII scan, tracing) adds its row by appending a Scenario
to EXTENSIONS below: a `key` for `--rows`, a `name` for the table, and the config/tenant/body/header overrides that
turn its stage on. Nothing else needs to change; see bench/perf/README.md ("Adding a row").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

SYSTEM = "You are a helpful support assistant for an online shop."
USER = "Where is my order 12345? It was due yesterday and I need it for a trip."


def request_body(model: str = "chat", stream: bool = False) -> dict[str, Any]:
    """The one request every row sends (the model is the gateway's route name, or a peer's model)."""
    body: dict[str, Any] = {"model": model, "max_tokens": 64,
                            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]}
    if stream:
        body["stream"] = True
    return body


@dataclass(frozen=True)
class Scenario:
    key: str  # what `--rows` selects it by
    name: str  # the row label
    stream: bool = False  # the request streams; the provider points at nginx's SSE location
    state: Literal["memory", "redis"] = "memory"
    ledger: Literal["sqlite", "postgresql"] = "sqlite"
    multi_worker: bool = False  # served by `--workers N` (the run's --workers) instead of 1
    # Deep-merged into config/gateway.yaml, into the `bench` tenant of policies/tenants.yaml, and into the body.
    config: dict[str, Any] = field(default_factory=dict)
    tenant: dict[str, Any] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    # Extra files written into the scenario's directory (path relative to it -> text), e.g. a policy file.
    files: dict[str, str] = field(default_factory=dict)

    def label(self, workers: int) -> str:
        return self.name.format(workers=workers)


# The default path is auth, route, limits (in memory), the access log line and the envelope into the embedded
# SQLite ledger; every other row changes one thing from it.
BASE: list[Scenario] = [
    Scenario("gateway", "gateway: default (memory state, SQLite ledger)"),
    Scenario("stream", "gateway: default, streaming", stream=True),
    Scenario("redis", "gateway: redis state", state="redis"),
    Scenario("postgres", "gateway: postgresql ledger", ledger="postgresql"),
    # Several workers need shared counters: on memory state with limits set, `serve` refuses them.
    Scenario("workers", "gateway: {workers} workers, redis state", state="redis", multi_worker=True),
]

# ---- EXTENSION POINT: rows later stages add (cache hit, semantic lookup, PII scan, tracing) -------------------------
# Example (a cache-hit row, once the cache exists):
#   Scenario("cache", "gateway: cache hit", config={"cache": {"enabled": True}}, headers={"X-Gateway-Cache": "on"}),
EXTENSIONS: list[Scenario] = []


def all_scenarios() -> list[Scenario]:
    return BASE + EXTENSIONS


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """base with override's keys laid over it; nested dicts merge, anything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
