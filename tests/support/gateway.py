"""Run a real `gateway serve` process on a free port from a config written for the test."""

from __future__ import annotations

import os
import secrets
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import yaml

from tests.support.processes import RunningProcess, start_process

READY = r"gateway listening on (?P<url>http://\S+)"


@dataclass
class GatewayInstance:
    url: str
    process: RunningProcess
    config_path: Path
    admin_key: str
    tenant_keys: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # the process's environment (for CLI calls beside it)

    def key(self, tenant: str) -> str:
        return self.tenant_keys[tenant]

    def client(self, tenant: str = "acme", **kw: Any) -> openai.OpenAI:
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 20)
        return openai.OpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", None) or self.key(tenant), **kw)

    def async_client(self, tenant: str = "acme", **kw: Any) -> openai.AsyncOpenAI:
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 20)
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", None) or self.key(tenant),
                                  **kw)

    def http(self, tenant: str | None = "acme", **kw: Any) -> httpx.Client:
        headers = {"authorization": f"Bearer {self.key(tenant)}"} if tenant else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=kw.pop("timeout", 20), **kw)

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.process.output().splitlines():
            if line.startswith("{"):
                try:
                    out.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    continue
        return out

    def request_log(self, request_id: str) -> dict[str, Any] | None:
        for rec in self.log_lines():
            if rec.get("logger") == "gateway.access" and rec.get("request_id") == request_id:
                return rec
        return None

    def wait_log(self, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """The access log line of a request; it is written by a background thread, so poll."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.request_log(request_id)
            if record is not None:
                return record
            time.sleep(0.05)
        raise AssertionError(f"no log line for {request_id}:\n{self.process.output()[-3000:]}")

    def wait_envelope(self, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """A request's envelope in the default SQLite ledger (`../ledger.db` beside the config); the
        writer inserts in batches, so poll."""
        db = self.config_path.parent.parent / "ledger.db"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with sqlite3.connect(db) as conn:
                conn.row_factory = sqlite3.Row
                row = conn.execute("SELECT * FROM envelopes WHERE request_id = ?", (request_id,)).fetchone()
            if row is not None:
                return dict(row)
            time.sleep(0.05)
        raise AssertionError(f"no envelope for {request_id}")

    def stop(self) -> None:
        self.process.stop()


def write_config(
    root: Path,
    *,
    providers: dict[str, Any],
    routes: dict[str, Any],
    tenants: dict[str, Any],
    server: dict[str, Any] | None = None,
    storage: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "policies").mkdir(parents=True, exist_ok=True)
    config = {
        "server": {"host": "127.0.0.1", "port": 0, **(server or {})},
        "storage": {"state": "memory", "ledger": "sqlite:///../ledger.db", **(storage or {})},
        "paths": {"policies": "../policies"},
        "providers": providers,
        "routes": routes,
        **(extra or {}),
    }
    path = root / "config" / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    (root / "policies" / "tenants.yaml").write_text(yaml.safe_dump({"tenants": tenants}, sort_keys=False))
    return path


def start_gateway(
    root: Path,
    *,
    providers: dict[str, Any],
    routes: dict[str, Any],
    tenants: dict[str, dict[str, Any]],
    server: dict[str, Any] | None = None,
    storage: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> GatewayInstance:
    """Tenants get one environment key each (TENANT_<NAME>_KEY) unless they declare api_keys."""
    tenant_keys: dict[str, str] = {}
    run_env = {**os.environ, **(env or {})}
    declared: dict[str, Any] = {}
    for name, spec in tenants.items():
        spec = dict(spec)
        if "api_keys" not in spec:
            var = f"TENANT_{name.upper().replace('-', '_')}_KEY"
            tenant_keys[name] = run_env[var] = "sk-test-" + secrets.token_urlsafe(24)
            spec["api_keys"] = [f"${{{var}}}"]
        declared[name] = spec
    admin_key = run_env.setdefault("GATEWAY_ADMIN_KEY", "admin-" + secrets.token_urlsafe(24))
    path = write_config(root, providers=providers, routes=routes, tenants=declared, server=server, storage=storage,
                        extra=extra)
    proc = start_process([sys.executable, "-m", "gateway", "serve", "--config", str(path), *(args or [])],
                         READY, env=run_env, timeout=30)
    return GatewayInstance(url=proc.url, process=proc, config_path=path, admin_key=admin_key,
                           tenant_keys=tenant_keys, env=run_env)
