"""Portkey AI gateway (npm `@portkey-ai/gateway`, pinned below) run as one plain node process (no cluster).

Installed into <root>/portkey from a generated package.json (`npm install --ignore-scripts`; the only install script is
Portkey's `patch-package` postinstall, a no-op as the tarball ships no patches). The manifest pins Portkey and overrides
@hono/node-server (see OVERRIDES: without it every streamed request fails with HTTP 500). Started as
`node --require <root>/portkey/bind-loopback.cjs .../build/start-server.js --port=<port> --headless` with:
- `--port=<port>`: the only way to set the port (only the `=` form is parsed; `--port <port>` silently means 8787).
- `--headless`: skips the /public web UI and the /log/stream SSE endpoint that feeds it.
- `NODE_ENV=production`: production mode (on its own it also disables the UI).
- `TRUSTED_CUSTOM_HOSTS=<upstream host>,localhost,127.0.0.1,::1`: the SSRF guard answers 400 "Invalid custom host" for a
  loopback/private `x-portkey-custom-host` unless its host is in this list (the default list is the same loopback set).
- `bind-loopback.cjs`: the server calls `listen(port)` with no host (all interfaces) and has no option to change it;
  this 5-line preload fills in 127.0.0.1 for host-less listen() calls and changes nothing else.
Portkey has no telemetry or update check (it calls api.portkey.ai only for its guardrail/files features, unused here)
and does not log requests to stdout. The OpenAI provider forwards to `<x-portkey-custom-host>/chat/completions`, so the
custom host is `<upstream>/v1`. NOTE: this module's `headers()` takes the upstream URL: `headers(upstream)`.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
from urllib.parse import urlsplit

NAME = "Portkey"
VERSION = "1.15.2"
PACKAGE = "@portkey-ai/gateway"
PATH = "/v1/chat/completions"
MODEL = "gpt-4o-mini"
DUMMY_KEY = "sk-bench-dummy"
# @portkey-ai/gateway asks for @hono/node-server ^1.3.3, which a fresh install resolves to 1.19.x. Since 1.14.2 that
# package keeps a fetch() Response's immutable Headers when Portkey re-wraps the body (`new Response(stream, res)`),
# so every streamed chat completion fails with "TypeError: immutable" -> HTTP 500 (Portkey-AI/gateway#1389, open).
# Pin 1.13.5, the version Portkey's own package-lock.json resolves (per Portkey-AI/gateway#1605), and the newest
# @hono/node-ws whose peer range accepts it.
OVERRIDES = {"@hono/node-server": "1.13.5", "@hono/node-ws": "1.2.0"}

_BIND_LOOPBACK = """\
const net = require("net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" && args[1] === undefined) args[1] = "127.0.0.1";
  return listen.apply(this, args);
};
"""


def _dir(root: pathlib.Path) -> pathlib.Path:
    return root.resolve() / "portkey"


def _pkg_dir(root: pathlib.Path) -> pathlib.Path:
    return _dir(root) / "node_modules" / "@portkey-ai" / "gateway"


def _installed_version(root: pathlib.Path) -> str | None:
    try:
        data = json.loads((_pkg_dir(root) / "package.json").read_text())
    except (OSError, ValueError):
        return None
    version = data.get("version")
    return version if isinstance(version, str) else None


def _write_preload(root: pathlib.Path) -> pathlib.Path:
    preload = _dir(root) / "bind-loopback.cjs"
    if not preload.exists() or preload.read_text() != _BIND_LOOPBACK:
        preload.write_text(_BIND_LOOPBACK)
    return preload


def _manifest() -> str:
    return json.dumps({"private": True, "dependencies": {PACKAGE: VERSION}, "overrides": OVERRIDES}, indent=2) + "\n"


def _installed_ok(root: pathlib.Path) -> bool:
    manifest = _dir(root) / "package.json"
    return (
        _installed_version(root) == VERSION
        and (_pkg_dir(root) / "build" / "start-server.js").exists()
        and manifest.exists()
        and manifest.read_text() == _manifest()
    )


def install(root: pathlib.Path) -> str:
    """Install the pinned Portkey gateway under root/portkey (idempotent); return its version."""
    target = _dir(root)
    if not _installed_ok(root):
        npm = shutil.which("npm")
        if npm is None or shutil.which("node") is None:
            raise RuntimeError("node/npm not found on PATH")
        target.mkdir(parents=True, exist_ok=True)
        (target / "package.json").write_text(_manifest())
        cmd = [
            npm,
            "install",
            "--prefix",
            str(target),
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
            "--no-update-notifier",
            "--loglevel=error",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"npm install {PACKAGE}@{VERSION} failed: {last}")
        if _installed_version(root) != VERSION:
            raise RuntimeError(f"npm install did not produce {PACKAGE}@{VERSION}")
    _write_preload(root)
    return VERSION


def headers(upstream: str) -> dict[str, str]:
    """Portkey routing headers; unlike other peers this takes the upstream URL (the custom host depends on it)."""
    return {
        "x-portkey-provider": "openai",
        "x-portkey-custom-host": upstream.rstrip("/") + "/v1",
        "Authorization": f"Bearer {DUMMY_KEY}",
    }


def start(root: pathlib.Path, upstream: str, port: int, log: pathlib.Path) -> subprocess.Popen[bytes]:
    """Start one Portkey node process on 127.0.0.1:port; stdout+stderr go to log."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node not found on PATH")
    preload = _write_preload(root)
    host = (urlsplit(upstream).hostname or "127.0.0.1").lower()
    trusted = ",".join(dict.fromkeys([host, "localhost", "127.0.0.1", "::1"]))
    env = dict(os.environ)
    env.update(
        {
            "NODE_ENV": "production",
            "TRUSTED_CUSTOM_HOSTS": trusted,
        }
    )
    for var in (
        "PORT",
        "REDIS_CONNECTION_STRING",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "NODE_OPTIONS",
    ):
        env.pop(var, None)
    cmd = [
        node,
        "--require",
        str(preload),
        str(_pkg_dir(root) / "build" / "start-server.js"),
        f"--port={port}",
        "--headless",
    ]
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd,
            cwd=str(_dir(root)),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
