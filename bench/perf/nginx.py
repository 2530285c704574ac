"""The fast mock upstream: nginx (from Debian) answering every chat request with a fixed body.

nginx costs a few microseconds a request, so a row's latency over `mock direct (nginx)` is what the proxy in front
of it adds. `/v1/...` answers a chat.completion JSON; `/stream/v1/...` answers a whole SSE stream in one response,
so wrk can load the streaming path of a proxy too (wrk only measures to the last byte; TTFT is measured elsewhere).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from harness import BenchError, Child, Registry, command_output, free_port, tcp_open, tool_path

MODEL = "gpt-4o-mini"
ANSWER = "Your order 12345 shipped yesterday and should arrive tomorrow before noon. Sorry for the delay!"
USAGE = {"prompt_tokens": 42, "completion_tokens": 20, "total_tokens": 62}
STREAM_PREFIX = "/stream"


def completion_body() -> str:
    body = {
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1764460800, "model": MODEL,
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "logprobs": None,
                     "finish_reason": "stop"}],
        "usage": USAGE,
    }
    return json.dumps(body, separators=(",", ":"))


def _chunk(delta: dict[str, str], finish: str | None) -> dict[str, object]:
    return {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1764460800, "model": MODEL,
            "system_fingerprint": "fp_bench",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def stream_body() -> str:
    """Role chunk, a few content chunks, the finish chunk, the usage chunk (choices: []), then [DONE]."""
    words = ANSWER.split(" ")
    pieces = [" ".join(words[i:i + 3]) + " " for i in range(0, len(words), 3)]
    events: list[dict[str, object]] = [_chunk({"role": "assistant", "content": ""}, None)]
    events += [_chunk({"content": piece}, None) for piece in pieces]
    events.append(_chunk({}, "stop"))
    events.append({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1764460800, "model": MODEL,
                   "choices": [], "usage": USAGE})
    lines = [f"data: {json.dumps(e, separators=(',', ':'))}\n\n" for e in events]
    return "".join(lines) + "data: [DONE]\n\n"


def _quoted(text: str) -> str:
    """An nginx single-quoted string: nginx turns \\n back into a newline; `$` would start a variable."""
    if "$" in text or "'" in text:
        raise ValueError("body must not contain $ or '")
    return "'" + text.replace("\\", "\\\\").replace("\n", "\\n") + "'"


def config(root: Path, port: int) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers then need no access to the private temp dir
    return f"""{user}daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location {STREAM_PREFIX}/v1/ {{
            default_type text/event-stream;
            return 200 {_quoted(stream_body())};
        }}
        location /v1/ {{
            default_type application/json;
            return 200 {_quoted(completion_body())};
        }}
    }}
}}
"""


def start(registry: Registry, root: Path) -> tuple[Child, str]:
    """Start nginx on a free loopback port; returns the child and its base URL (no /v1)."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = root / "nginx.conf"
    conf.write_text(config(root, port))
    child = registry.spawn("nginx", [tool_path("nginx"), "-p", str(root), "-c", str(conf)], root / "nginx.log")
    for _ in range(200):
        if tcp_open("127.0.0.1", port, timeout=0.2):
            return child, f"http://127.0.0.1:{port}"
        if not child.alive():
            break
        time.sleep(0.05)
    error = (root / "error.log").read_text(errors="replace") if (root / "error.log").exists() else ""
    raise BenchError(f"nginx did not start: {child.tail()} {error}".strip())


def version() -> str:
    return command_output([tool_path("nginx"), "-v"]).removeprefix("nginx version: ").removeprefix("nginx/")
