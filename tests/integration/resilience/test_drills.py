"""Failure drills: the gateway in front of real mock upstreams that fail in every way they can."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import openai
import pytest

from tests.integration.resilience.conftest import GatewayFactory, Upstream

HELLO = [{"role": "user", "content": "hello"}]
PRIMARY = {"provider": "primary", "model": "gpt-4o-mini"}
SECONDARY = {"provider": "secondary", "model": "gpt-4o-mini", "priority": 1}
FAILOVER = {"targets": [PRIMARY, SECONDARY], "retries": 2, "deadline_s": 3, "attempt_timeout_s": 0.5,
            "backoff": {"base_s": 0.01, "cap_s": 0.05}}


def _say(directive: dict[str, Any]) -> list[dict[str, str]]:
    return [{"role": "user", "content": "hello #mock" + json.dumps(directive)}]


async def _volley(client: openai.AsyncOpenAI, n: int, concurrency: int, **kw: Any) -> list[tuple[Any, float]]:
    """n requests, `concurrency` at a time; each result is (response or exception, seconds)."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> tuple[Any, float]:
        async with gate:
            started = time.monotonic()
            try:
                result: Any = await client.chat.completions.with_raw_response.create(model="failover", **kw)
            except openai.APIError as e:
                result = e
            return result, time.monotonic() - started

    return await asyncio.gather(*(one() for _ in range(n)))


async def test_primary_at_half_errors_secondary_healthy(make_gateway: GatewayFactory,
                                                        upstreams: tuple[Upstream, Upstream]) -> None:
    primary, secondary = upstreams
    primary.faults(error_rate=0.5, error_statuses=[500, 503], seed=11)
    gw = make_gateway({"failover": FAILOVER})
    async with gw.async_client() as client:
        results = await _volley(client, 400, 16, messages=HELLO)
    ok = [r for r, _ in results if not isinstance(r, Exception)]
    assert len(ok) / len(results) >= 0.995, [r for r, _ in results if isinstance(r, Exception)][:3]
    assert max(seconds for _, seconds in results) < FAILOVER["deadline_s"]
    attempts = [int(r.headers["x-gateway-attempts"]) for r in ok]
    assert 2 in attempts and max(attempts) <= 3
    assert secondary.requests()  # the secondary really took over


async def test_primary_hanging_trips_the_breaker(make_gateway: GatewayFactory,
                                                 upstreams: tuple[Upstream, Upstream]) -> None:
    primary, _ = upstreams
    primary.faults(hang_rate=1.0)
    gw = make_gateway({"failover": FAILOVER})
    async with gw.async_client() as client:
        for _ in range(8):
            started = time.monotonic()
            answer = await client.chat.completions.with_raw_response.create(model="failover", messages=HELLO)
            assert time.monotonic() - started < 1.5  # one attempt timeout (0.5 s), then the secondary
            assert answer.headers["x-gateway-provider"] == "secondary"
    # five consecutive timeouts opened the breaker: later requests never reached the primary
    assert len(primary.requests()) == 5
    async with httpx.AsyncClient() as http:
        breakers = (await http.get(gw.url + "/admin/breakers",
                                   headers={"authorization": f"Bearer {gw.admin_key}"})).json()
    states = {b["target"]: b["state"] for b in breakers["data"]}
    assert states["primary/gpt-4o-mini"] == "open"
    record = gw.wait_log(answer.headers["x-request-id"])
    assert record["attempts"][0] == {**record["attempts"][0], "provider": "primary", "error": "BreakerOpen",
                                     "skipped": True}


def test_breaker_recovers_after_the_target_heals(make_gateway: GatewayFactory,
                                                 upstreams: tuple[Upstream, Upstream]) -> None:
    primary, _ = upstreams
    received: list[dict[str, Any]] = []
    hook = _webhook_receiver(received)
    try:
        primary.faults(error_rate=1.0, error_statuses=[503])
        gw = make_gateway({"failover": FAILOVER}, resilience={"webhook_url": hook.url})
        client = gw.client()
        for _ in range(8):
            client.chat.completions.create(model="failover", messages=HELLO)
        tripped_at = len(primary.requests())
        assert tripped_at == 5
        for _ in range(5):  # open: the primary sees nothing
            assert client.chat.completions.with_raw_response.create(
                model="failover", messages=HELLO).headers["x-gateway-provider"] == "secondary"
        assert len(primary.requests()) == tripped_at
        primary.faults()  # the primary heals
        time.sleep(1.2)  # the cooldown passes
        providers = [client.chat.completions.with_raw_response.create(model="failover", messages=HELLO)
                     .headers["x-gateway-provider"] for _ in range(4)]
        assert providers == ["primary"] * 4  # probe, second success closes it, then normal traffic
        states = [b["state"] for b in httpx.get(gw.url + "/admin/breakers", headers={
            "authorization": f"Bearer {gw.admin_key}"}).json()["data"] if b["target"] == "primary/gpt-4o-mini"]
        assert states == ["closed"]
        logged = [(r["from"], r["to"]) for r in gw.log_lines() if r.get("logger") == "gateway.breaker"]
        assert logged == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
        metrics = httpx.get(gw.url + "/metrics").text
        assert 'gateway_breaker_transitions_total{target="primary/gpt-4o-mini",to_state="open"} 1.0' in metrics
        deadline = time.monotonic() + 5
        while len(received) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [m["breaker"]["to"] for m in received] == ["open", "half_open", "closed"]
        assert all("primary/gpt-4o-mini" in m["text"] for m in received)
    finally:
        hook.stop()


def test_primary_429_with_long_retry_after_fails_over_at_once(make_gateway: GatewayFactory,
                                                             upstreams: tuple[Upstream, Upstream]) -> None:
    primary, _ = upstreams
    primary.faults(rate_limit_rate=1.0, retry_after_s=30)
    gw = make_gateway({"failover": FAILOVER, "solo": {"targets": [PRIMARY], "deadline_s": 2}})
    started = time.monotonic()
    raw = gw.client().chat.completions.with_raw_response.create(model="failover", messages=HELLO)
    assert time.monotonic() - started < 0.5 and raw.headers["x-gateway-provider"] == "secondary"
    # alone, the 429 (and its retry-after) reaches the client, at once: 30 s does not fit in 2
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as info:
        gw.client().chat.completions.create(model="solo", messages=HELLO)
    assert time.monotonic() - started < 0.5
    assert info.value.response.headers["retry-after"] == "30"


def test_retry_after_that_fits_is_honoured(make_gateway: GatewayFactory,
                                           upstreams: tuple[Upstream, Upstream]) -> None:
    primary, _ = upstreams
    primary.faults(rate_limit_rate=1.0, retry_after_s=0.4)
    gw = make_gateway({"solo": {"targets": [PRIMARY], "deadline_s": 3, "retries": 2}})

    def heal() -> None:
        time.sleep(0.15)
        primary.faults()

    import threading

    threading.Thread(target=heal).start()
    started = time.monotonic()
    raw = gw.client().chat.completions.with_raw_response.create(model="solo", messages=HELLO)
    assert 0.35 < time.monotonic() - started < 1.5
    record = gw.wait_log(raw.headers["x-request-id"])
    assert [a["status"] for a in record["attempts"]] == [429, 200]
    assert record["attempts"][1]["waited_ms"] >= 350


def test_primary_resetting_connections(make_gateway: GatewayFactory, upstreams: tuple[Upstream, Upstream]) -> None:
    primary, _ = upstreams
    primary.faults(reset_rate=1.0)
    gw = make_gateway({"failover": FAILOVER})
    raw = gw.client().chat.completions.with_raw_response.create(model="failover", messages=HELLO)
    assert raw.parse().choices[0].message.content == "Mock answer to: hello"
    record = gw.wait_log(raw.headers["x-request-id"])
    assert [(a["provider"], a["error"]) for a in record["attempts"]] == [
        ("primary", "UpstreamUnavailable"), ("secondary", None)]


def test_both_down_is_a_clear_502_within_the_deadline(make_gateway: GatewayFactory,
                                                      upstreams: tuple[Upstream, Upstream]) -> None:
    for up in upstreams:
        up.faults(error_rate=1.0, error_statuses=[503])
    gw = make_gateway({"failover": FAILOVER})
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as info:
        gw.client().chat.completions.create(model="failover", messages=HELLO, extra_headers={"x-request-id": "down"})
    assert info.value.status_code == 502 and time.monotonic() - started < 1
    record = gw.wait_log("down")
    providers = [a["provider"] for a in record["attempts"]]
    # 1 + retries attempts: the primary, at once the secondary, then whichever's backoff ends first
    assert len(providers) == 3 and providers[:2] == ["primary", "secondary"]


def test_both_hanging_is_a_504_at_the_deadline(make_gateway: GatewayFactory,
                                               upstreams: tuple[Upstream, Upstream]) -> None:
    for up in upstreams:
        up.faults(hang_rate=1.0)
    gw = make_gateway({"failover": {**FAILOVER, "deadline_s": 1.2, "retries": 5}})
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as info:
        gw.client().chat.completions.create(model="failover", messages=HELLO)
    elapsed = time.monotonic() - started
    assert info.value.status_code == 504 and 1.0 < elapsed < 1.6


def test_both_breakers_open_is_a_fast_503(make_gateway: GatewayFactory,
                                          upstreams: tuple[Upstream, Upstream]) -> None:
    for up in upstreams:
        up.faults(error_rate=1.0, error_statuses=[500])
    gw = make_gateway({"failover": {**FAILOVER, "retries": 1}})
    client = gw.client()
    for _ in range(5):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="failover", messages=HELLO)
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="failover", messages=HELLO)
    assert info.value.status_code == 503 and time.monotonic() - started < 0.2
    assert info.value.response.headers["retry-after"] and info.value.response.headers["retry-after-ms"]


def test_a_400_is_not_retried(make_gateway: GatewayFactory, upstreams: tuple[Upstream, Upstream]) -> None:
    primary, secondary = upstreams
    gw = make_gateway({"failover": FAILOVER})
    with pytest.raises(openai.BadRequestError):
        gw.client().chat.completions.create(model="failover", messages=_say({"status": 400}))
    assert len(primary.requests()) == 1 and secondary.requests() == []


def test_401_from_a_provider_fails_over_without_retrying_it(make_gateway: GatewayFactory,
                                                            upstreams: tuple[Upstream, Upstream]) -> None:
    primary, _ = upstreams
    primary.faults(error_rate=1.0, error_statuses=[401])
    gw = make_gateway({"failover": {**FAILOVER, "targets": [PRIMARY, {**SECONDARY, "priority": 0}]}})
    for _ in range(6):
        primary.clear()
        raw = gw.client().chat.completions.with_raw_response.create(model="failover", messages=HELLO)
        record = gw.wait_log(raw.headers["x-request-id"])
        assert len(primary.requests()) <= 1  # tried at most once per request, never retried
        assert record["attempts"][-1]["provider"] == "secondary"
        assert raw.headers["x-gateway-attempts"] in ("1", "2")


def test_stream_failing_before_its_first_chunk_fails_over(make_gateway: GatewayFactory,
                                                          upstreams: tuple[Upstream, Upstream]) -> None:
    primary, _ = upstreams
    primary.faults(stream_cut_after=0)
    gw = make_gateway({"failover": FAILOVER})
    stream = gw.client().chat.completions.with_raw_response.create(model="failover", messages=HELLO, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
    assert text == "Mock answer to: hello"
    assert stream.headers["x-gateway-provider"] == "secondary" and stream.headers["x-gateway-attempts"] == "2"


def test_stream_dying_midway_ends_with_an_error_event(make_gateway: GatewayFactory,
                                                      upstreams: tuple[Upstream, Upstream]) -> None:
    primary, secondary = upstreams
    primary.faults(stream_cut_after=3)
    gw = make_gateway({"failover": FAILOVER})
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {gw.key('acme')}"}) as http, \
            http.stream("POST", "/v1/chat/completions",
                        json={"model": "failover", "messages": HELLO, "stream": True}) as r:
        events = [e for e in b"".join(r.iter_bytes()).decode().split("\n\n") if e]
    assert r.status_code == 200 and "data: [DONE]" not in events
    assert "error" in json.loads(events[-1].removeprefix("data: "))
    assert secondary.requests() == []  # bytes had reached the client: no failover after that


def test_token_budget_decrements_across_attempts(make_gateway: GatewayFactory,
                                                 upstreams: tuple[Upstream, Upstream]) -> None:
    primary, secondary = upstreams
    primary.faults(error_rate=1.0, error_statuses=[500])
    gw = make_gateway({"budgeted": {**FAILOVER, "token_budget": 60},
                       "tight": {**FAILOVER, "token_budget": 14}})
    gw.client().chat.completions.create(model="budgeted", messages=HELLO, max_tokens=100)
    prompt = 8  # "hello" as one user message: 3 + 3 + role + content
    first, second = primary.requests()[-1]["body"], secondary.requests()[-1]["body"]
    assert first["max_tokens"] == 60 - prompt
    assert second["max_tokens"] == 60 - 2 * prompt  # the failed attempt's prompt is spent
    with pytest.raises(openai.BadRequestError) as info:  # the prompt alone does not fit
        gw.client().chat.completions.create(model="tight", messages=[{"role": "user", "content": "word " * 20}])
    assert info.value.code == "token_budget_exceeded"
    with pytest.raises(openai.InternalServerError) as info2:  # after one failure, too little is left
        gw.client().chat.completions.create(model="tight", messages=HELLO)
    assert info2.value.code == "token_budget_exhausted"


def test_equal_priorities_share_load_by_weight(make_gateway: GatewayFactory,
                                               upstreams: tuple[Upstream, Upstream]) -> None:
    primary, secondary = upstreams
    gw = make_gateway({"shared": {"targets": [{**PRIMARY, "weight": 3}, {**SECONDARY, "priority": 0, "weight": 1}]}})
    client = gw.client()
    for _ in range(200):
        client.chat.completions.create(model="shared", messages=HELLO)
    share = len(primary.requests()) / 200
    assert 0.65 < share < 0.85
    assert len(secondary.requests()) == 200 - len(primary.requests())


async def test_over_limit_requests_are_shed_at_once(make_gateway: GatewayFactory,
                                                    upstreams: tuple[Upstream, Upstream]) -> None:
    primary, _ = upstreams
    primary.faults(latency_ms=300)
    gw = make_gateway({"solo": {"targets": [PRIMARY]}}, server={"max_in_flight": 8},
                      tenants={"acme": {"routes": ["*"]}, "small": {"routes": ["*"], "max_in_flight": 2}})
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        async def one(tenant: str) -> httpx.Response:
            return await http.post("/v1/chat/completions", json={"model": "solo", "messages": HELLO},
                                   headers={"authorization": f"Bearer {gw.key(tenant)}"})

        started = time.monotonic()
        responses = await asyncio.gather(*(one("acme") for _ in range(80)))
        statuses = [r.status_code for r in responses]
        assert statuses.count(200) >= 8 and statuses.count(503) >= 60 and set(statuses) <= {200, 503}
        shed = next(r for r in responses if r.status_code == 503)
        assert int(shed.headers["retry-after"]) >= 1 and int(shed.headers["retry-after-ms"]) > 0
        assert shed.json()["error"]["code"] == "gateway_overloaded"
        assert time.monotonic() - started < 2
        small = await asyncio.gather(*(one("small") for _ in range(6)))
        assert sorted(r.status_code for r in small) == [200, 200, 429, 429, 429, 429]
        limited = next(r for r in small if r.status_code == 429)
        assert limited.headers["retry-after-ms"] and limited.json()["error"]["code"] == "concurrency_limit_exceeded"
        # operators are not locked out while the model pool is full
        flood = [asyncio.create_task(one("acme")) for _ in range(40)]
        await asyncio.sleep(0.05)
        assert (await http.get("/readyz")).status_code == 200
        await asyncio.gather(*flood)


async def test_memory_stays_flat_at_ten_times_the_cap(make_gateway: GatewayFactory,
                                                      upstreams: tuple[Upstream, Upstream]) -> None:
    primary, _ = upstreams
    primary.faults(latency_ms=500)
    gw = make_gateway({"solo": {"targets": [PRIMARY]}}, server={"max_in_flight": 20})

    def rss_kb() -> int:
        with open(f"/proc/{gw.process.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=gw.url, timeout=10, limits=limits,
                                 headers={"authorization": f"Bearer {gw.key('acme')}"}) as http:
        async def round_() -> list[int]:
            rs = await asyncio.gather(*(http.post("/v1/chat/completions", json={"model": "solo", "messages": HELLO})
                                        for _ in range(200)))
            return [r.status_code for r in rs]

        for _ in range(3):  # warm up
            await round_()
        before = rss_kb()
        for _ in range(6):
            statuses = await round_()
            assert statuses.count(503) > 100
        after = rss_kb()
    assert after - before < 0.05 * before + 2048, (before, after)


class _Receiver:
    def __init__(self, server: Any, thread: Any) -> None:
        self.server, self.thread = server, thread
        self.url = f"http://127.0.0.1:{server.server_address[1]}/hook"

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join()


def _webhook_receiver(received: list[dict[str, Any]]) -> _Receiver:
    """A real HTTP server standing in for Slack: it keeps what it is sent."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append(json.loads(body))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return _Receiver(server, thread)
