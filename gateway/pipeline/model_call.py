"""A model call, top to bottom: the one place its stages are declared, in order, and run.

    ingress       request id, the gateway's in-flight cap, body limits, the error   http/ingress.py
                  boundary; when the request is over it runs the clean-up steps
    auth          API key -> tenant                                                 pipeline/auth.py
    admission     the tenant's in-flight cap; clean-up: its slot back               pipeline/admission.py
    body          JSON body, the operation's checks, the feature header             pipeline/body.py
    policy        model name -> route; may this tenant use it                       pipeline/policy.py
    --- the route is known: the stages below are built per route -------------------------------------
    route caps    the route's max_tokens on the completion                          pipeline/policy.py
    limits        prompt estimate; rate limits and budgets reserved;                pipeline/reserve.py
                  clean-up: settle, release, or count as spent
    upstream      the router: targets, breakers, bulkheads, retries, failover       pipeline/upstream.py
    answer/relay  JSON reply, or the SSE relay; clean-up: what a stream served,     pipeline/reply.py
                  its upstream closed
    settle        the limits stage's clean-up                                       pipeline/reserve.py
    record        the ingress's last clean-up: cost, metrics, envelope, log line    pipeline/record.py

A new stage is one module (gateway/pipeline/stage.py says what it may do) and one line in
`STAGES`. For each route and operation the stages that have work there are compiled into a plan
once (`ModelCalls.plan`); a stage a route does not use is not in its plan and costs nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from gateway.errors import InternalError
from gateway.http.validation import validate_chat, validate_embeddings
from gateway.pipeline.admission import AdmitTenant
from gateway.pipeline.auth import Authenticate
from gateway.pipeline.body import ReadBody
from gateway.pipeline.policy import ResolveRoute, RouteCaps
from gateway.pipeline.reply import AnswerHook, ChunkHook, EndHook, json_reply, stream_reply
from gateway.pipeline.reserve import Reserve
from gateway.pipeline.stage import ANSWER_TYPES, Answer, ModelRequest, Operation, Stage, StageResult, overrides
from gateway.pipeline.upstream import Upstream
from gateway.providers.base import ChatStream
from gateway.settings import RouteSettings

if TYPE_CHECKING:
    from gateway.http.dispatch import Inbound, Reply
    from gateway.runtime import Gateway

STAGES: tuple[type[Stage], ...] = (
    Authenticate,
    AdmitTenant,
    ReadBody,
    ResolveRoute,
    # per route from here on
    RouteCaps,
    Reserve,
    Upstream,
)

CHAT = Operation("chat", validate_chat, streams=True, completes=True)
EMBEDDINGS = Operation("embeddings", validate_embeddings)
OPERATIONS = (CHAT, EMBEDDINGS)

Before = Callable[[ModelRequest], StageResult]


class Plan:
    """The stages that have work on one route for one operation, as what the runner calls."""

    __slots__ = ("answer_hooks", "before_names", "befores", "chunk_hooks", "end_hooks", "route", "stages")

    def __init__(self, stages: Sequence[Stage], route: RouteSettings | None) -> None:
        self.route = route
        self.stages = tuple(stages)
        # (name, hook, index in `stages`)
        self.befores: tuple[tuple[str, Before, int], ...] = tuple(
            (s.name, s.before, i) for i, s in enumerate(stages) if overrides(s, "before"))
        self.before_names = tuple(name for name, _, _ in self.befores)
        # (index in `stages`, hook): an answer made by stage k is seen by the stages before k only.
        self.answer_hooks: tuple[tuple[int, AnswerHook], ...] = tuple(
            (i, s.on_answer) for i, s in enumerate(stages) if overrides(s, "on_answer"))[::-1]
        self.chunk_hooks: tuple[tuple[int, ChunkHook], ...] = tuple(
            (i, s.on_chunk) for i, s in enumerate(stages) if overrides(s, "on_chunk"))[::-1]
        self.end_hooks: tuple[tuple[int, EndHook], ...] = tuple(
            (i, s.on_stream_end) for i, s in enumerate(stages) if overrides(s, "on_stream_end"))[::-1]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)


class ModelCalls:
    """Runs model calls through the declared stages. Built once with the gateway; `stages` and
    `clock` are for tests (a stage added in a test, an injected clock)."""

    def __init__(self, gateway: Gateway, stages: Sequence[type[Stage]] = STAGES,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.gateway = gateway
        self.clock = clock
        front = 0
        while front < len(stages) and not stages[front].per_route:
            front += 1
        if any(not s.per_route for s in stages[front:]):
            raise ValueError("the stages that run before the route is known must come first")
        self.front_types, self.route_types = tuple(stages[:front]), tuple(stages[front:])
        self.keep_response = gateway.settings.storage.envelope_bodies == "all"
        self._front: dict[str, Plan] = {}
        self._plans: dict[str, dict[str, Plan]] = {}
        for op in OPERATIONS:
            self._front[op.kind] = Plan(_built(self.front_types, gateway, None, op), None)
            self._plans[op.kind] = {}
        for op in OPERATIONS:
            for name, route in gateway.settings.routes.items():
                self.plan(op, name, route)

    def plan(self, operation: Operation, name: str, route: RouteSettings) -> Plan:
        """The route's plan, compiled on first use and again when the route's settings change."""
        plans = self._plans[operation.kind]
        plan = plans.get(name)
        if plan is None or plan.route is not route:
            front = self._front[operation.kind]
            stages = (*front.stages, *_built(self.route_types, self.gateway, route, operation))
            plan = plans[name] = Plan(stages, route)
        return plan

    async def run(self, inbound: Inbound, operation: Operation) -> Reply:
        req = ModelRequest(inbound, operation)
        call, clock = req.call, self.clock
        call.kind = operation.kind
        plan = front = self._front[operation.kind]
        befores, i = front.befores, 0
        call.stage_names = front.before_names
        marks = call.stage_marks
        marks.append(clock())
        while True:
            if i == len(befores):
                if plan is not front:
                    raise InternalError("No stage answered the call.")  # the upstream stage always answers
                # The route is known: on with its own plan, past the stages already run.
                assert req.route is not None
                plan = self.plan(operation, call.route or "", req.route)
                befores = plan.befores
                call.stage_names = plan.before_names
                continue
            name, before, index = befores[i]
            i += 1
            try:
                result = before(req)
                if result is not None and type(result) not in ANSWER_TYPES:
                    result = await result  # type: ignore[misc]
            finally:
                marks.append(clock())
            if result is not None:
                call.answered_by = name
                return self._reply(req, plan, result, index)  # type: ignore[arg-type]

    def _reply(self, req: ModelRequest, plan: Plan, answer: Answer, at: int) -> Reply:
        """The answer made by stage `at`, through the hooks of the stages before it, as the reply."""
        if isinstance(answer, ChatStream):
            if not plan.chunk_hooks and not plan.end_hooks:
                return stream_reply(req, answer, (), ())
            chain = [(i, h) for i, h in plan.chunk_hooks if i < at]
            # What a stage held back passes on through the hooks of the stages before it (later in the
            # chain): from the first hook in the chain whose stage comes before it.
            ends = [(sum(1 for k, _ in chain if k >= i), h) for i, h in plan.end_hooks if i < at]
            return stream_reply(req, answer, [h for _, h in chain], ends)
        answer_hooks = [h for i, h in plan.answer_hooks if i < at] if plan.answer_hooks else ()
        return json_reply(req, answer, answer_hooks, self.keep_response)


def _built(types: Sequence[type[Stage]], gateway: Gateway, route: RouteSettings | None,
           operation: Operation) -> list[Stage]:
    out = []
    for cls in types:
        stage = cls.build(gateway, route, operation)
        if stage is not None:
            out.append(stage)
    return out
