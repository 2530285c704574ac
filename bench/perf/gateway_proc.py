"""Start the gateway for one scenario: its own config dir (temp), its own ledger, a random tenant key.

Also the two optional back ends of the scenarios: Redis (state) and PostgreSQL (ledger), both on loopback. Redis is
only ever read and written through the gateway's own namespaced keys (nothing is flushed); PostgreSQL gets a fresh
database per scenario that is dropped afterwards.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from harness import BenchError, Child, Registry, wait_for_line
from scenarios import Scenario, deep_merge, request_body

REDIS_URL = "redis://127.0.0.1:6379/0"
PG_HOST, PG_PORT, PG_USER, PG_ADMIN_DB = "127.0.0.1", 5432, "postgres", "postgres"
READY = r"gateway listening on (?P<url>http://\S+)"
START_TIMEOUT_S = 60.0
MODEL = "gpt-4o-mini"


@dataclass
class Gateway:
    child: Child
    url: str
    key: str
    database: str | None = None  # the PostgreSQL database to drop after the row

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class Databases:
    """PostgreSQL databases this run created, so cleanup drops exactly those."""

    names: list[str] = field(default_factory=list)

    def create(self) -> str:
        name = f"gw_perf_{secrets.token_hex(5)}"
        _psql(f'CREATE DATABASE "{name}"')
        self.names.append(name)
        return name

    def drop(self, name: str) -> None:
        # FORCE ends connections a killed gateway may have left behind.
        _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self.names:
            self.names.remove(name)

    def drop_all(self) -> None:
        for name in list(self.names):
            try:
                self.drop(name)
            except BenchError as e:
                print(f"bench: could not drop database {name}: {e}", file=sys.stderr)


def _psql(sql: str) -> None:
    args = ["psql", "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER, "-d", PG_ADMIN_DB, "-v", "ON_ERROR_STOP=1",
            "-q", "-c", sql]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False,
                              env={**os.environ, "PGCONNECT_TIMEOUT": "3"})
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BenchError(f"psql failed: {e}") from None
    if done.returncode != 0:
        raise BenchError(f"psql failed: {(done.stderr or done.stdout).strip()}")


def redis_problem() -> str | None:
    """None when Redis answers PING on loopback, else why not."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            reply = s.recv(64)
    except OSError as e:
        return f"Redis is not reachable at 127.0.0.1:6379 ({e.strerror or e})"
    return None if reply.startswith(b"+PONG") else f"Redis at 127.0.0.1:6379 answered {reply[:40]!r}"


def postgres_problem() -> str | None:
    try:
        _psql("SELECT 1")
    except BenchError as e:
        return f"PostgreSQL is not reachable at {PG_USER}@{PG_HOST}:{PG_PORT} ({e})"
    return None


def write_config(root: Path, scenario: Scenario, upstream_v1: str, ledger: str, workers: int) -> Path:
    """config/gateway.yaml, config/pricing.yaml and policies/tenants.yaml under root; returns the config path."""
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "policies").mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "log_level": "info", "workers": workers},
        "storage": {"state": REDIS_URL if scenario.state == "redis" else "memory", "ledger": ledger},
        "paths": {"policies": "../policies"},
        "providers": {"up": {"kind": "openai", "base_url": upstream_v1, "api_key": "${UP_KEY}"}},
        "routes": {"chat": {"targets": [{"provider": "up", "model": MODEL}]}},
    }
    # Limits far above any load, so the limits stage runs on every request and never refuses one.
    tenant: dict[str, Any] = {
        "routes": ["*"], "api_keys": ["${BENCH_KEY}"],
        "budgets": {"tokens_per_day": 10**12, "usd_per_day": 100_000},
        "rate_limits": {"requests_per_minute": 10**9, "tokens_per_minute": 10**10},
    }
    path = root / "config" / "gateway.yaml"
    path.write_text(yaml.safe_dump(deep_merge(config, scenario.config), sort_keys=False))
    pricing = {"prices": {f"up/{MODEL}": {"input": 0.15, "output": 0.60}}}
    (root / "config" / "pricing.yaml").write_text(yaml.safe_dump(pricing, sort_keys=False))
    tenants = {"tenants": {"bench": deep_merge(tenant, scenario.tenant)}}
    (root / "policies" / "tenants.yaml").write_text(yaml.safe_dump(tenants, sort_keys=False))
    for rel, text in scenario.files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return path


def start(registry: Registry, root: Path, scenario: Scenario, upstream_v1: str, workers: int,
          databases: Databases) -> Gateway:
    """Write the scenario's config, start `gateway serve`, and wait until a real chat request answers 200."""
    database = databases.create() if scenario.ledger == "postgresql" else None
    ledger = (f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}" if database
              else "sqlite:///../ledger.db")  # relative to the config file
    config = write_config(root, scenario, upstream_v1, ledger, workers)
    key = f"sk-bench-{secrets.token_urlsafe(18)}"
    env = {**os.environ, "UP_KEY": "x", "BENCH_KEY": key, "PYTHONUNBUFFERED": "1"}
    env.pop("GATEWAY_CONFIG", None)
    args = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
    if workers > 1:
        args += ["--workers", str(workers)]
    # stdout (one JSON access line per request) goes to a file: writing it is part of the realistic cost.
    child = registry.spawn(f"gateway ({scenario.key})", args, root / "gateway.log", env=env)
    url = wait_for_line(child, READY, START_TIMEOUT_S).group("url").rstrip("/")
    gateway = Gateway(child, url, key, database)
    body = deep_merge(request_body(stream=scenario.stream), scenario.body)
    wait_ok(child, url + "/v1/chat/completions", body, {**gateway.headers, **scenario.headers}, START_TIMEOUT_S)
    return gateway


def wait_ok(child: Child, url: str, body: dict[str, Any], headers: dict[str, str], timeout: float) -> None:
    """Poll with the benchmark's own request until it answers 200: the port being open is not enough."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    with httpx.Client(timeout=10.0) as client:
        while time.monotonic() < deadline:
            if not child.alive():
                raise BenchError(f"{child.name} exited (code {child.popen.poll()}); log tail:\n{child.tail()}")
            try:
                response = client.post(url, json=body, headers=headers)
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}: {response.text[:300]}"
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.25)
    raise BenchError(f"{child.name} never answered 200 within {timeout:.0f} s (last: {last})")


def log_problems(log: Path, lines: int = 8) -> str:
    """The last lines of a gateway log that are not access lines: where its errors are."""
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    other = [line for line in text if '"gateway.access"' not in line]
    return "\n".join(other[-lines:])
