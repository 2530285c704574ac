"""Locust side of the drill: the payload mix, the burst shape, and one sample per request.

run.py starts this with `python -m locust --headless` and passes everything by environment:
DRILL_KEY (tenant key), DRILL_BASELINE_RPS, DRILL_DURATION_S and DRILL_SAMPLES (where the
samples go as JSON when Locust quits). Every request names the route `support`.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

from locust import LoadTestShape, constant_throughput, events, task
from locust.contrib.fasthttp import FastHttpUser
from traffic import BURST_FACTOR, in_burst, users_for

ROUTE = "support"
BASELINE_RPS = float(os.environ.get("DRILL_BASELINE_RPS", "80"))
DURATION_S = float(os.environ.get("DRILL_DURATION_S", "60"))
BASE_USERS = users_for(BASELINE_RPS)
# Users x this rate is exactly the baseline; a burst doubles the users, so it doubles the rate.
PER_USER_RPS = BASELINE_RPS / BASE_USERS

_WORDS = ("order refund shipping invoice account password delivery warranty address payment "
          "subscription cancel upgrade tracking parcel damaged replacement discount support").split()
_rng = random.Random(7)  # a fixed payload sequence, so two runs send comparable bodies


def _text(n_bytes: int) -> str:
    words: list[str] = []
    size = 0
    while size < n_bytes:
        word = _rng.choice(_WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)


def _long_messages() -> list[dict[str, str]]:
    """A support conversation of ~2-4 KB over five messages."""
    per = _rng.randint(2048, 4096) // 5
    roles = ("system", "user", "assistant", "user", "assistant")
    return [*({"role": r, "content": _text(per)} for r in roles), {"role": "user", "content": "So what now?"}]


_TOOLS = [{"type": "function", "function": {
    "name": "lookup_order",
    "description": "Find an order by its number.",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
}}]

# One row per finished request: [kind, latency_ms, ok, status, attempts, provider, start_epoch_s].
_samples: list[list[Any]] = []


@events.request.add_listener
def _record(name: str, response_time: float, exception: Exception | None, response: Any, start_time: float,
            **_: Any) -> None:
    headers = getattr(response, "headers", None) or {}
    attempts = headers.get("x-gateway-attempts")
    _samples.append([name, response_time, exception is None, getattr(response, "status_code", 0) or 0,
                     int(attempts) if attempts and attempts.isdigit() else 0,
                     headers.get("x-gateway-provider") or "", start_time])


@events.quitting.add_listener
def _write_samples(**_: Any) -> None:
    path = os.environ.get("DRILL_SAMPLES")
    if path:
        Path(path).write_text(json.dumps(_samples))


class SupportApp(FastHttpUser):
    wait_time = constant_throughput(PER_USER_RPS)
    # A request can take at most the route's deadline (5 s); past 10 s something is stuck.
    network_timeout = 10.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        self.headers = {"authorization": f"Bearer {os.environ['DRILL_KEY']}"}

    def _chat(self, kind: str, body: dict[str, Any]) -> None:
        with self.client.post("/v1/chat/completions", json={"model": ROUTE, **body}, headers=self.headers,
                              name=kind, catch_response=True) as resp:
            if resp.status_code == 200 and not resp.json().get("choices"):
                resp.failure("no choices in the answer")

    @task(40)
    def short_chat(self) -> None:
        self._chat("short", {"messages": [{"role": "user", "content": "Where is my order #1234?"}]})

    @task(15)
    def long_chat(self) -> None:
        self._chat("long", {"messages": _long_messages()})

    @task(10)
    def tool_call(self) -> None:
        self._chat("tool", {"messages": [{"role": "user", "content": "Status of order A-77?"}], "tools": _TOOLS})

    @task(20)
    def stream_chat(self) -> None:
        body = {"model": ROUTE, "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "Explain your refund policy."}]}
        started = time.perf_counter()
        with self.client.post("/v1/chat/completions", json=body, headers=self.headers, name="stream",
                              stream=True, catch_response=True) as resp:
            # Read to the end even on an error status, so the connection can be reused.
            text = "".join(c if isinstance(c, str) else c.decode("utf-8", "replace") for c in resp.iter_content())
            # Locust times a stream to its headers; the user waits for the last event.
            resp.request_meta["response_time"] = (time.perf_counter() - started) * 1000
            if resp.status_code != 200:
                return  # the status alone marks it failed
            if 'data: {"error"' in text:
                resp.failure("error event in stream")
            elif "data: [DONE]" not in text:
                resp.failure("stream ended without [DONE]")

    @task(15)
    def embeddings(self) -> None:
        with self.client.post("/v1/embeddings", json={"model": ROUTE, "input": [_text(200), _text(200)]},
                              headers=self.headers, name="embeddings", catch_response=True) as resp:
            if resp.status_code == 200 and len(resp.json().get("data", [])) != 2:
                resp.failure("expected two embeddings")


class Bursts(LoadTestShape):
    """The baseline, doubled for a few seconds every period (see traffic.py); stops at DURATION_S."""

    def tick(self) -> tuple[int, float] | None:
        t = self.get_run_time()
        if t >= DURATION_S:
            return None
        users = round(BASE_USERS * (BURST_FACTOR if in_burst(t) else 1.0))
        # A burst's extra users all arrive within a second (faster makes Locust warn of bunching).
        return users, BASE_USERS * BURST_FACTOR
