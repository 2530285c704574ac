"""upstream: the call itself, through the router (targets by priority and weight, breakers,
bulkheads, retries with backoff, failover; gateway/pipeline/router.py). The last stage: it always
answers, unless a stage before it did."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

from gateway.pipeline.stage import Answer, ModelRequest, Operation, Stage
from gateway.settings import RouteSettings

if TYPE_CHECKING:
    from gateway.runtime import Gateway


class Upstream(Stage):
    name = "upstream"

    @classmethod
    def build(cls, gateway: Gateway, route: RouteSettings | None, operation: Operation) -> Stage:
        return cls(gateway, operation.kind)

    def __init__(self, gateway: Gateway, kind: str) -> None:
        super().__init__(gateway)
        self.router = gateway.router
        self.embeddings = kind == "embeddings"

    def before(self, req: ModelRequest) -> Awaitable[Answer]:
        # The router's own coroutine, awaited by the pipeline: no layer of this stage's in between.
        call, route, body, router = req.call, req.route, req.body, self.router
        assert route is not None
        if self.embeddings:
            return router.embeddings(call, route, body, call.again)
        if not req.stream:
            return router.chat(call, route, body, call.again)
        call.stream = True
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return router.chat_stream(call, route, body, include_usage, call.again)
