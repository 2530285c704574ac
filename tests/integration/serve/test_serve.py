"""`gateway serve` and `gateway keys` as a user runs them: real processes, real ledgers."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.gateway import READY, GatewayInstance, start_gateway, write_config
from tests.support.pg import PORT as PG_PORT
from tests.support.pg import create_database, drop_database, postgres_url
from tests.support.processes import start_process
from tests.support.tcpproxy import ThreadedTcpProxy

HELLO = [{"role": "user", "content": "hello"}]
MOCK_ONLY = {"providers": {"mock": {"kind": "mock"}},
             "routes": {"demo": {"targets": [{"provider": "mock", "model": "mock-1"}]}}}


def _gateway_cli(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args, "--config", str(config)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


@pytest.fixture
def demo_gateway(tmp_path: Path) -> Iterator[GatewayInstance]:
    gw = start_gateway(tmp_path, **MOCK_ONLY, tenants={"acme": {"routes": ["*"]}, "beta": {"routes": ["*"]}},
                       storage={"auth_refresh_s": 0.3})
    yield gw
    gw.stop()


def test_first_run_prints_a_demo_key_once(tmp_path: Path) -> None:
    config = write_config(tmp_path, **MOCK_ONLY, tenants={"demo": {"routes": ["*"]}})
    args = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
    first = start_process(args, READY)
    try:
        deadline = time.monotonic() + 5
        while not (key := re.search(r"^\s+(gw-\S+)$", first.output(), re.M)):
            assert time.monotonic() < deadline, first.output()
            time.sleep(0.05)
        client = openai.OpenAI(base_url=first.url + "/v1", api_key=key.group(1), max_retries=0)
        answer = client.chat.completions.create(model="demo", messages=HELLO)
        assert answer.choices[0].message.content == "Mock answer to: hello"
    finally:
        first.stop()
    second = start_process(args, READY)
    try:
        time.sleep(0.2)
        assert "gw-" not in second.output()
        client = openai.OpenAI(base_url=second.url + "/v1", api_key=key.group(1), max_retries=0)
        assert client.models.list().data[0].id == "demo"
    finally:
        second.stop()


def test_no_first_run_key_when_listening_beyond_loopback(tmp_path: Path) -> None:
    config = write_config(tmp_path, **MOCK_ONLY, tenants={"demo": {"routes": ["*"]}})
    proc = start_process([sys.executable, "-m", "gateway", "serve", "--config", str(config), "--host", "0.0.0.0"],
                         r"gateway listening on (?P<url>http://\S+)")
    try:
        time.sleep(0.2)
        assert "gw-" not in proc.output()
    finally:
        proc.stop()


def test_keys_cli_create_list_revoke(demo_gateway: GatewayInstance) -> None:
    env = demo_gateway.env
    created = _gateway_cli(demo_gateway.config_path, "keys", "create", "--tenant", "beta", "--name", "svc", env=env)
    assert created.returncode == 0, created.stderr
    key = re.search(r"key:\s+(gw-\S+)", created.stdout).group(1)
    key_id = re.search(r"id:\s+(key_\w+)", created.stdout).group(1)
    client = openai.OpenAI(base_url=demo_gateway.url + "/v1", api_key=key, max_retries=0)
    # works at once: an unknown key triggers one ledger refresh
    assert client.chat.completions.create(model="demo", messages=HELLO).choices[0].message.content
    listed = _gateway_cli(demo_gateway.config_path, "keys", "list", env=env)
    assert key_id in listed.stdout and "beta" in listed.stdout and key not in listed.stdout
    assert "env:TENANT_ACME_KEY" in listed.stdout
    revoked = _gateway_cli(demo_gateway.config_path, "keys", "revoke", key_id, env=env)
    assert revoked.returncode == 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            client.models.list()
        except openai.AuthenticationError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("a revoked key kept working")
    assert "already revoked" in _gateway_cli(demo_gateway.config_path, "keys", "revoke", key_id, env=env).stdout
    assert _gateway_cli(demo_gateway.config_path, "keys", "revoke", "key_0000000000000000", env=env).returncode == 1
    unknown = _gateway_cli(demo_gateway.config_path, "keys", "create", "--tenant", "nobody", env=env)
    assert unknown.returncode == 2 and "unknown tenant 'nobody'" in unknown.stderr


def test_admin_api_manages_keys(demo_gateway: GatewayInstance) -> None:
    admin = {"authorization": f"Bearer {demo_gateway.admin_key}"}
    with httpx.Client(base_url=demo_gateway.url) as http:
        assert http.get("/admin/keys").status_code == 401
        assert http.get("/admin/keys", headers={"authorization": f"Bearer {demo_gateway.key('acme')}"}
                        ).status_code == 401
        r = http.post("/admin/keys", headers=admin, json={"tenant": "beta", "name": "from-api"})
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["key"].startswith("gw-") and created["tenant"] == "beta"
        assert http.post("/admin/keys", headers=admin, json={"tenant": "nobody"}).status_code == 400
        assert http.post("/admin/keys", headers=admin, json={"tenant": "beta", "extra": 1}).status_code == 400
        listed = http.get("/admin/keys", headers=admin).json()["data"]
        assert created["id"] in [k["id"] for k in listed] and "key" not in listed[0]
        client = openai.OpenAI(base_url=demo_gateway.url + "/v1", api_key=created["key"], max_retries=0)
        assert client.models.list().data
        assert http.delete(f"/admin/keys/{created['id']}", headers=admin).status_code == 200
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
        again = http.delete(f"/admin/keys/{created['id']}", headers=admin)  # idempotent
        assert again.status_code == 200 and again.json()["revoked_at"]
        assert http.delete("/admin/keys/key_0000000000000000", headers=admin).status_code == 404


def test_admin_api_is_off_without_an_admin_key(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, **MOCK_ONLY, tenants={"acme": {}}, env={"GATEWAY_ADMIN_KEY": ""})
    try:
        with httpx.Client(base_url=gw.url) as http:
            assert http.get("/admin/keys").status_code == 403
            r = http.get("/admin/keys", headers={"authorization": "Bearer anything"})
            assert r.status_code == 403 and "GATEWAY_ADMIN_KEY" in r.json()["error"]["message"]
    finally:
        gw.stop()


def test_readyz_follows_the_postgres_ledger(tmp_path: Path) -> None:
    name = asyncio.run(create_database())
    proxy = ThreadedTcpProxy("127.0.0.1", PG_PORT)
    proxy.start()
    gw = None
    try:
        url = postgres_url(name, port=proxy.port)
        gw = start_gateway(tmp_path, **MOCK_ONLY, tenants={"acme": {}}, storage={"ledger": url})
        with httpx.Client(base_url=gw.url, timeout=10) as http:
            assert http.get("/healthz").status_code == 200
            assert http.get("/readyz").json() == {"status": "ready", "checks": {"ledger": "ok", "state": "ok"}}
            proxy.cut()
            r = http.get("/readyz")
            assert r.status_code == 503 and r.json()["checks"]["ledger"] == "unreachable"
            assert r.headers["retry-after"]
            assert http.get("/healthz").status_code == 200
            # serving does not wait on the ledger: auth is answered from memory
            client = gw.client()
            assert client.chat.completions.create(model="demo", messages=HELLO).choices
            proxy.restore()
            deadline = time.monotonic() + 10
            while http.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "readyz did not recover"
                time.sleep(0.2)
    finally:
        if gw:
            gw.stop()
        proxy.stop()
        asyncio.run(drop_database(name))


def test_several_workers_serve(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, **MOCK_ONLY, tenants={"acme": {}}, args=["--workers", "2"])
    try:
        client = gw.client()
        deadline = time.monotonic() + 15
        while True:
            try:
                answers = [client.chat.completions.create(model="demo", messages=HELLO) for _ in range(10)]
                break
            except openai.APIConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert all(a.choices[0].message.content == "Mock answer to: hello" for a in answers)
    finally:
        gw.stop()


@pytest.mark.parametrize(("yaml_text", "expected"), [
    ("server: {port: 'x'}\n", "gateway.yaml: server.port: "),
    ("server: {prot: 1}\n", "gateway.yaml: server.prot: unknown key"),
    ("providers: {p: {kind: openai, base_url: 'http://x', api_key: '${NOT_SET_ANYWHERE}'}}\n",
     "gateway.yaml: providers.p.api_key: environment variable NOT_SET_ANYWHERE is not set"),
    ("routes: {r: {targets: [{provider: nope, model: m}]}}\n",
     "gateway.yaml: routes.r.targets.0.provider: unknown provider 'nope'"),
    ("server: [\n", "gateway.yaml: line "),
])
def test_config_mistakes_stop_startup_with_one_line(tmp_path: Path, yaml_text: str, expected: str) -> None:
    (tmp_path / "gateway.yaml").write_text(yaml_text)
    result = _gateway_cli(tmp_path / "gateway.yaml", "serve")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    result = _gateway_cli(tmp_path / "absent.yaml", "serve")
    assert result.returncode == 2 and "absent.yaml: file not found" in result.stderr


def test_python_dash_m_and_help() -> None:
    out = subprocess.run([sys.executable, "-m", "gateway", "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    for command in ("serve", "keys", "mock-upstream"):
        assert command in out.stdout
