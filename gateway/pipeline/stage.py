"""The stage protocol: what a stage of a model call may do, and the request it works on.

A stage is one class in one module, named once in the stage list of `gateway/pipeline/model_call.py`.
For every route and operation the pipeline asks each stage whether it has work there (`build`);
a stage that answers None is left out of that route's plan and costs nothing on it. Plans are
compiled once per route (and again when a route's settings object changes).

What a stage may do, each by overriding one method (the pipeline calls only what is overridden):
- `before(req)`: act before the call: check and refuse (raise a GatewayError), transform the
  request body, write what it learns on the Call, take something and register its clean-up on
  `call.cleanups`; or answer early by returning an `Answer` (a cache hit): the stages after it and
  the upstream call are skipped. May return an awaitable when it has to wait; a stage that never
  waits returns None straight away and costs no coroutine.
- `on_answer(req, answer)`: see a whole (JSON) answer, for the stages that ran before the answer was
  made, in reverse order (a middleware stack unwinding); may return another body to send.
- `on_chunk(req, payload)`: see each stream payload on its way to the client (same order); return it,
  another, or None to hold it back; `on_stream_end(req)` then releases what it held (or None).

A stage never reaches into another stage: what it learns goes on the Call, what the request is (its
body, its route) is on the `ModelRequest`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from gateway.pipeline.context import Call
from gateway.providers.base import ChatResult, ChatStream, EmbeddingsResult
from gateway.settings import RouteSettings

if TYPE_CHECKING:
    from gateway.http.dispatch import Inbound
    from gateway.runtime import Gateway

# What a call is answered with: a whole JSON answer, or a stream of chunk payloads.
Answer = ChatResult | EmbeddingsResult | ChatStream
ANSWER_TYPES = (ChatResult, EmbeddingsResult, ChatStream)


@dataclass(frozen=True, slots=True)
class Operation:
    """One kind of model call the pipeline serves (chat, embeddings; rerank and others to come)."""

    kind: str  # the Call's kind: metric, log and envelope label; the router's call
    # The body's own checks (gateway/http/validation.py); returns the model (route) name it asks for.
    validate: Callable[[dict[str, Any]], str]
    streams: bool = False  # the body may ask for a stream (`"stream": true`)
    completes: bool = False  # the answer has completion tokens (caps and reservations apply)


class ModelRequest:
    """The request as the stages see it; what they learn about the call goes on `call`."""

    __slots__ = ("body", "call", "gateway", "headers", "inbound", "operation", "route", "stream")

    def __init__(self, inbound: Inbound, operation: Operation) -> None:
        self.inbound = inbound
        self.headers: Mapping[str, str] = inbound.headers
        self.gateway: Gateway = inbound.gateway
        self.call: Call = inbound.call
        self.operation = operation
        self.body: dict[str, Any] = {}  # the parsed JSON body (set by the body stage)
        self.route: RouteSettings | None = None  # set by the policy stage
        self.stream = False  # the client asked for a stream


StageResult = Answer | None | Awaitable[Answer | None]


class Stage:
    """Base of every stage; see the module docstring for the protocol."""

    name: ClassVar[str]  # the timings' and the plan's name for it
    # False: the stage runs before the route is known (auth, body, policy) and is built once with
    # route None; True: it is built per route, after the stages that resolve it.
    per_route: ClassVar[bool] = True

    @classmethod
    def build(cls, gateway: Gateway, route: RouteSettings | None, operation: Operation) -> Stage | None:
        """This stage for one route and operation, or None when it has nothing to do there."""
        return cls(gateway)

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def before(self, req: ModelRequest) -> StageResult:
        return None

    def on_answer(self, req: ModelRequest, answer: Answer) -> bytes | None:
        return None

    def on_chunk(self, req: ModelRequest, payload: bytes) -> bytes | None:
        return payload

    def on_stream_end(self, req: ModelRequest) -> bytes | None:
        return None


def overrides(stage: Stage, method: str) -> bool:
    return getattr(type(stage), method) is not getattr(Stage, method)
