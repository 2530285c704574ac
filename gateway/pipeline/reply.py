"""answer/relay: an answer becomes the client's reply, a JSON body or a server-sent-events stream.

A whole answer passes through the `on_answer` hooks of the stages that ran before it was made
(last first) and is sent as JSON; what it reported (usage, served model, finish reason) goes on
the Call. A stream is relayed chunk by chunk through their `on_chunk` hooks; its clean-up step
(registered here, so it runs before the limits' settlement) works out what the stream served and
closes the upstream.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from copy import copy

import orjson

from gateway.errors import GatewayError, InternalError
from gateway.http.replies import JSONReply
from gateway.http.sse import SSEResponse
from gateway.limits.tokens import count_messages
from gateway.pipeline.context import Call
from gateway.pipeline.stage import Answer, ModelRequest
from gateway.providers.base import ChatResult, ChatStream, Usage

_log = logging.getLogger("gateway.stream")

# How long a stream whose client left after the finish reason still reads the upstream for its
# usage chunk (OpenAI sends it right after the finish): the provider bills those tokens anyway, and
# with the usage the record is exact rather than the whole reservation.
USAGE_LINGER_S = 2.0

AnswerHook = Callable[[ModelRequest, Answer], "bytes | None"]
ChunkHook = Callable[[ModelRequest, bytes], "bytes | None"]
EndHook = Callable[[ModelRequest], "bytes | None"]


def route_headers(call: Call) -> list[tuple[bytes, bytes]]:
    return [
        (b"x-gateway-route", (call.route or "").encode()),
        (b"x-gateway-provider", (call.provider or "").encode()),
        (b"x-gateway-attempts", b"%d" % call.attempt_count),
        *call.extra_headers,
    ]


def json_reply(req: ModelRequest, answer: ChatResult | Answer, hooks: Sequence[AnswerHook],
               keep_body: bool) -> JSONReply:
    call = req.call
    assert not isinstance(answer, ChatStream)
    call.usage, call.model_served = answer.usage, answer.served_model
    if isinstance(answer, ChatResult):
        call.finish_reason = answer.finish_reason
    if hooks:
        # A copy: the answer may be one a stage keeps and hands out again (a cache hit), and a
        # rewrite for this client must not reach the next one.
        answer = copy(answer)
        for hook in hooks:
            body = hook(req, answer)
            if body is not None:
                answer.body = body
    if keep_body:
        call.response_body = answer.body.decode("utf-8", "replace")
    return JSONReply(answer.body, route_headers(call))


def stream_reply(req: ModelRequest, stream: ChatStream, chunk_hooks: Sequence[ChunkHook],
                 end_hooks: Sequence[tuple[int, EndHook]]) -> SSEResponse:
    relay = Relay(req, stream, chunk_hooks, end_hooks)
    req.call.cleanups.append(relay.finish)
    return SSEResponse(relay.events(), route_headers(req.call))


def _stream_error(exc: GatewayError) -> bytes:
    return orjson.dumps({"error": {"message": exc.message, "type": exc.type, "param": exc.param,
                                   "code": exc.error_code}})


class Relay:
    """One stream's relay: `events()` while the response is open, `finish()` (a clean-up step) once
    it is over. The accounting runs in `finish()`, after the response's last byte: a client that
    closes its connection on `[DONE]` must not cut it short."""

    def __init__(self, req: ModelRequest, stream: ChatStream, chunk_hooks: Sequence[ChunkHook],
                 end_hooks: Sequence[tuple[int, EndHook]]) -> None:
        self.req, self.stream = req, stream
        self.chunk_hooks, self.end_hooks = chunk_hooks, end_hooks
        self.completed = False
        self.relayed = 0  # chunks sent on

    def _through(self, payload: bytes | None, start: int = 0) -> bytes | None:
        """A payload through the chunk hooks from `start` on (the chain runs from the stage nearest the
        answer outwards); None once one holds it back."""
        hooks = self.chunk_hooks
        for i in range(start, len(hooks)):
            if payload is None:
                return None
            payload = hooks[i](self.req, payload)
        return payload

    async def events(self) -> AsyncGenerator[bytes, None]:
        """Chunks as they arrive, then `[DONE]`; after the first byte, a failure is reported in-band
        as one OpenAI-style error event, and the stream ends without `[DONE]`.

        Once the finish reason has been relayed, only the usage is still to come: a client that
        leaves then does not stop the stream at once (`Call.linger_s`), so the usage is read."""
        call = self.req.call
        translator = self.stream.translator
        hooks = self.chunk_hooks
        try:
            async for payload in self.stream.chunks:
                if call.ttft_ms is None:
                    call.ttft_ms = call.elapsed_ms()
                self.relayed += 1
                if translator.finish_reason is not None and not call.linger_s and not translator.usage.reported:
                    call.linger_s = USAGE_LINGER_S
                if hooks:
                    out = self._through(payload)
                    if out is None:
                        continue
                    payload = out
                yield payload
            for index, end in self.end_hooks:
                tail = self._through(end(self.req), index)
                if tail is not None:
                    yield tail
            self.completed = True
            yield b"[DONE]"
        except GatewayError as exc:
            call.error_type, call.error_code = type(exc).__name__, exc.error_code
            yield _stream_error(exc)
        except Exception:
            _log.exception("stream relay failed", extra={"fields": {"request_id": call.request_id}})
            internal = InternalError("The gateway failed while relaying the stream.")
            call.error_type, call.error_code = type(internal).__name__, internal.error_code
            yield _stream_error(internal)

    async def finish(self, call: Call, ending: str) -> None:
        """What the stream served goes on the Call (the limits' settlement runs next), then the
        upstream is closed."""
        stream = self.stream
        try:
            if not self.completed and call.error_type is None:
                call.client_disconnected = True
            call.model_served = stream.translator.served_model
            call.finish_reason = stream.translator.finish_reason
            # Usage counts as reported only once the stream finished: Anthropic reports the prompt at
            # the start and the completion with the finish, so a stream cut before has a partial count.
            # Without it the settlement counts the whole reservation as spent (the provider may have
            # billed what it generated); with no reservation, the record is the estimate below.
            usage = stream.usage if stream.usage.reported and call.finish_reason is not None else None
            call.usage = usage or self._estimate()
        finally:
            await stream.aclose()

    def _estimate(self) -> Usage:
        """No usage reported: the prompt estimate, and a token for every chunk relayed (OpenAI streams
        about one token a chunk; the role and finish chunks make it an overestimate by two at most)."""
        call = self.req.call
        prompt = call.prompt_estimate
        if prompt is None:
            prompt = count_messages(self.req.body.get("messages") or (), call.target_model or "gpt-4o")
        return Usage(prompt_tokens=prompt, completion_tokens=self.relayed, reported=False)
