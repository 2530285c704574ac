"""Test stages for the pipeline harness: each is what a real stage would be, one module each."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, SupportsIndex

import orjson

from gateway.pipeline.context import Call, Cleanup
from gateway.pipeline.stage import Answer, ModelRequest, Operation, Stage, StageResult
from gateway.providers.base import ChatResult, Usage
from gateway.settings import RouteSettings


class CountingSteps(list[Cleanup]):
    """`Call.cleanups` that remembers every step registered and every step run, with the ending it saw."""

    def __init__(self, steps: Iterable[Cleanup]) -> None:
        super().__init__(steps)
        self.registered: list[Cleanup] = list(self)
        self.ran: list[Cleanup] = []

    def append(self, step: Cleanup) -> None:
        self.registered.append(step)
        super().append(step)

    def pop(self, index: SupportsIndex = -1) -> Cleanup:
        step = super().pop(index)
        self.ran.append(step)
        return step


class Probe(Stage):
    """First of all stages: counts the call's clean-up steps (the ingress's own included)."""

    name = "probe"
    per_route = False

    def before(self, req: ModelRequest) -> StageResult:
        req.call.cleanups = CountingSteps(req.call.cleanups)
        return None


def steps_of(call: Call) -> CountingSteps:
    assert isinstance(call.cleanups, CountingSteps)
    return call.cleanups


class Disabled(Stage):
    """A stage no route uses: never in a plan, never run."""

    name = "disabled"
    runs = 0

    @classmethod
    def build(cls, gateway: Any, route: RouteSettings | None, operation: Operation) -> Stage | None:
        return None

    def before(self, req: ModelRequest) -> StageResult:
        Disabled.runs += 1
        return None


CANNED = {"id": "canned", "object": "chat.completion", "model": "canned",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "from the stage"},
                       "finish_reason": "stop"}]}


class Canned(Stage):
    """Answers early (as a cache hit would) when the request asks for it by `user: "canned"`."""

    name = "canned"

    def before(self, req: ModelRequest) -> StageResult:
        if req.body.get("user") != "canned":
            return None
        return ChatResult(orjson.dumps(CANNED), Usage(3, 2, reported=True), "canned", "stop")


class Marker(Stage):
    """Sees the answer and each chunk: adds its mark to the content, holds the first chunk back until
    the end of the stream (as an output scanner holding a window would)."""

    name = "marker"

    def on_answer(self, req: ModelRequest, answer: Answer) -> bytes | None:
        assert isinstance(answer, ChatResult)
        data = orjson.loads(answer.body)
        data["choices"][0]["message"]["content"] += " [marked]"
        return orjson.dumps(data)

    def on_chunk(self, req: ModelRequest, payload: bytes) -> bytes | None:
        if b'"w0"' in payload:
            _HELD[id(req)] = payload  # held back: released by on_stream_end
            return None
        return payload.replace(b'"w1"', b'"W1"')

    def on_stream_end(self, req: ModelRequest) -> bytes | None:
        return _HELD.pop(id(req), None)


_HELD: dict[int, bytes] = {}


class Tagger(Stage):
    """Sees each chunk: turns every `w` word into a `t` word (as a restoring stage would rewrite)."""

    name = "tagger"

    def on_chunk(self, req: ModelRequest, payload: bytes) -> bytes | None:
        return payload.replace(b'"w', b'"t')


STORED = ChatResult(orjson.dumps(CANNED), Usage(3, 2, reported=True), "stored", "stop")


class Stored(Stage):
    """Answers every request with the one answer it keeps (as a cache hit returns what it stored)."""

    name = "stored"

    def before(self, req: ModelRequest) -> StageResult:
        return STORED
