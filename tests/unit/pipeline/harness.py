"""A fast harness for the model-call pipeline: the real gateway (ingress, dispatcher, the declared
stages, limits on the memory store, the SQLite ledger's writer) in this process, its providers
replaced by scripted fakes, requests driven as ASGI calls. No server process, no sockets, no sleeps:
the router runs on an injected clock, and "the client left" fires the ingress's watch at once
(`Harness.leave`) instead of waiting for its timer.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from gateway.errors import UpstreamError
from gateway.http.dispatch import Dispatcher
from gateway.http.ingress import CALL_KEY, IngressMiddleware
from gateway.http.openai_api import MODEL_CALLS
from gateway.limits.stage import Limits
from gateway.pipeline.context import Call
from gateway.pipeline.model_call import STAGES, ModelCalls
from gateway.pipeline.stage import Stage
from gateway.providers.base import ChatResult, ChatStream, EmbeddingsResult, Provider, Usage
from gateway.runtime import Gateway
from gateway.settings import Settings, load_settings
from gateway.store.state.base import StateStore

KEY = "sk-harness-acme-0123456789"
PROMPT, COMPLETION = 11, 7  # what every scripted answer reports


class FakeClock:
    """The router's clock: moves only when told, or when the router waits (`sleep`)."""

    def __init__(self) -> None:
        # From the process's monotonic clock: a call's deadline is reckoned from when it started.
        self.now = time.perf_counter()
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@dataclass
class _Translator:
    usage: Usage = field(default_factory=Usage)
    served_model: str | None = None
    finish_reason: str | None = None


class ScriptedProvider(Provider):
    """Each call does the next step of `script`: "ok"; "stream" (three chunks, a finish, the usage);
    "hang" (waits until cancelled, `entered` set); an UpstreamError (raised). Counts its calls and
    the streams it closed."""

    def __init__(self, name: str, settings: Any) -> None:
        super().__init__(name, settings)
        self.script: list[Any] = []
        self.calls = 0
        self.closed = 0
        self.entered = asyncio.Event()
        self.release_stream = asyncio.Event()  # a "stream_wait" stream sends its rest once this is set

    def _next(self) -> Any:
        self.calls += 1
        step = self.script.pop(0) if self.script else "ok"
        if isinstance(step, UpstreamError):
            raise step
        return step

    async def _hang(self) -> None:
        self.entered.set()
        await asyncio.Event().wait()

    async def chat(self, body: dict[str, Any], model: str, *, timeout_s: float) -> ChatResult:
        if self._next() == "hang":
            await self._hang()
        answer = {"id": "chatcmpl-1", "object": "chat.completion", "model": model,
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                               "finish_reason": "stop"}],
                  "usage": {"prompt_tokens": PROMPT, "completion_tokens": COMPLETION}}
        return ChatResult(orjson.dumps(answer), Usage(PROMPT, COMPLETION, reported=True), model, "stop")

    async def chat_stream(self, body: dict[str, Any], model: str, *, timeout_s: float,
                          include_usage: bool) -> ChatStream:
        step = self._next()
        if step == "hang":
            await self._hang()
        translator = _Translator(served_model=model)
        provider = self

        async def chunks() -> AsyncGenerator[bytes, None]:
            for i in range(3):
                yield orjson.dumps({"choices": [{"index": 0, "delta": {"content": f"w{i}"}}]})
                if i == 0 and step == "stream_wait":
                    provider.entered.set()
                    await provider.release_stream.wait()
            translator.finish_reason = "stop"
            yield orjson.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            translator.usage = Usage(PROMPT, COMPLETION, reported=True)
            yield orjson.dumps({"choices": [], "usage": {"prompt_tokens": PROMPT, "completion_tokens": COMPLETION}})

        async def close() -> None:
            provider.closed += 1

        return ChatStream(chunks(), translator, close)  # type: ignore[arg-type]

    async def embeddings(self, body: dict[str, Any], model: str, *, timeout_s: float) -> EmbeddingsResult:
        if self._next() == "hang":
            await self._hang()
        answer = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.5]}],
                  "model": model, "usage": {"prompt_tokens": PROMPT, "total_tokens": PROMPT}}
        return EmbeddingsResult(orjson.dumps(answer), Usage(PROMPT, 0, reported=True), model)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    call: Call

    def json(self) -> Any:
        return orjson.loads(self.body)

    def events(self) -> list[bytes]:
        return [line[6:] for line in self.body.split(b"\n\n") if line.startswith(b"data: ")]


def write_config(root: Path, *, config: dict[str, Any] | None = None, tenant: dict[str, Any] | None = None) -> Path:
    """Two mock-kind providers `a` and `b` (replaced by scripted fakes), the route `chat` (a, then b),
    the route `solo` (a only), the route `emb`; tenant `acme` with a day budget unless told otherwise."""
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "policies").mkdir(exist_ok=True)
    doc: dict[str, Any] = {
        "storage": {"ledger": f"sqlite:///{root / 'ledger.db'}", "journal_dir": str(root / "journal")},
        "paths": {"policies": "../policies"},
        "providers": {"a": {"kind": "mock"}, "b": {"kind": "mock"}},
        "routes": {
            "chat": {"targets": [{"provider": "a", "model": "m1", "priority": 1},
                                 {"provider": "b", "model": "m1", "priority": 2}]},
            "solo": {"targets": [{"provider": "a", "model": "m1"}]},
            "emb": {"targets": [{"provider": "a", "model": "e1"}]},
        },
    }
    for key, value in (config or {}).items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    (root / "config" / "gateway.yaml").write_text(yaml.safe_dump(doc))
    (root / "config" / "pricing.yaml").write_text(yaml.safe_dump({"prices": {
        "a/m1": {"input": "1", "output": "2"}, "b/m1": {"input": "1", "output": "2"},
        "a/e1": {"input": "1", "output": "0"}}}))
    acme = {"api_keys": ["${ACME_API_KEY}"], "budgets": {"tokens_per_day": 10**6}, **(tenant or {})}
    (root / "policies" / "tenants.yaml").write_text(yaml.safe_dump({"tenants": {"acme": acme}}))
    return root / "config" / "gateway.yaml"


class Harness:
    """One gateway in this process. `stages` replaces the declared stage list (a stage added by a test)."""

    def __init__(self, settings: Settings, *, stages: Sequence[type[Stage]] = STAGES,
                 state: StateStore | None = None) -> None:
        self.gateway = gw = Gateway.build(settings)
        if state is not None:  # a store of the test's own, networked as Redis is
            gw.state = state
            gw.limits = Limits(settings, state, gw.metrics)
        self.providers: dict[str, ScriptedProvider] = {}
        for name, provider in list(gw.providers.items()):
            fake = ScriptedProvider(name, provider.settings)
            gw.providers[name] = fake  # the router holds this very dict
            self.providers[name] = fake
        self.clock = FakeClock()
        gw.router.clock = self.clock
        gw.router.sleep = self.clock.sleep
        gw.router.rng = random.Random(7)
        gw.model_calls = ModelCalls(gw, stages)
        self.app = IngressMiddleware(Dispatcher(gw, MODEL_CALLS, _not_found), gw)
        self.calls: list[Call] = []  # every request's Call, in order
        self.envelopes: list[Any] = []
        submit = gw.envelopes.submit_envelope

        def spy(fields: Any) -> None:
            self.envelopes.append(fields)
            submit(fields)

        gw.envelopes.submit_envelope = spy  # type: ignore[method-assign]

    async def __aenter__(self) -> Harness:
        await self.gateway.ledger.migrate()
        await self.gateway.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.gateway.aclose()

    async def request(self, body: dict[str, Any], *, path: str = "/v1/chat/completions", key: str | None = KEY,
                      headers: Sequence[tuple[str, str]] = (), leave: asyncio.Event | None = None,
                      on_send: Callable[[dict[str, Any]], Awaitable[None]] | None = None) -> Reply:
        """One request; `leave` set: the client disconnects (see `leave`)."""
        raw = orjson.dumps(body)
        head = [(b"content-type", b"application/json"), *((k.encode(), v.encode()) for k, v in headers)]
        if key is not None:
            head.append((b"authorization", b"Bearer " + key.encode()))
        scope: dict[str, Any] = {"type": "http", "method": "POST", "path": path, "headers": head}
        sent = False
        gone = leave or asyncio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        status, out_headers, parts = 0, {}, []

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, out_headers
            if message["type"] == "http.response.start":
                status = message["status"]
                out_headers = {k.decode(): v.decode() for k, v in message["headers"]}
            else:
                parts.append(message.get("body", b""))
            if on_send is not None:
                await on_send(message)

        try:
            await self.app(scope, receive, send)
        finally:
            self.calls.append(scope[CALL_KEY])
        return Reply(status, out_headers, b"".join(parts), scope[CALL_KEY])

    def leave(self, gone: asyncio.Event) -> None:
        """The client disconnects now: the ingress's watch starts at once (no timer) and sees it."""
        gone.set()
        self.gateway.deadlines.sweep(float("inf"))

    async def counted(self, route: str = "chat") -> dict[str, int]:
        """What the tenant's counters hold now (settled plus held), by the counter's last name."""
        limits = self.gateway.limits
        plan = limits.plans.get("acme", None, None, route, self.gateway.settings.routes[route])
        out: dict[str, int] = {}
        for group in plan.groups:
            out.update(await limits.store.usage(group.buckets(0, 0)))
        return {k.rsplit(".", 1)[1]: v for k, v in out.items()}


async def _not_found(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def settings_at(root: Path, **kw: Any) -> Settings:
    return load_settings(write_config(root, **kw), env={"ACME_API_KEY": KEY})
