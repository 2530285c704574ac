"""Ingress: request id, body size limit, the error boundary, the clean-up, and the one log line per request.

A plain ASGI middleware (no per-request Starlette objects). Every response leaves with an
`x-request-id`; every `GatewayError` becomes an OpenAI error body; anything unexpected becomes
a 500 in the same shape, logged with its traceback, never a dropped connection.

When the request is over (its answer's last byte sent, or it failed, was cancelled, or its client
left) the ingress runs the call's clean-up steps once (gateway/pipeline/cleanup.py), telling each
how the call ended. Its own are the first registered, so they run last: the gateway's in-flight
slot, then the record (cost, metrics, envelope, log line), which so sees everything settled. An
error answer is sent after the clean-up: what the call held is free when the client hears of it.

What reading a request may cost (head size and time, a declared body over the limit, a body's
rate) is enforced by the HTTP protocol before a request gets here (`uvicorn_protocol.py`, which
takes its `ConnectionLimits` from this app; with a uvicorn outside the tested range,
`server_protocol.py` falls back to uvicorn's own protocol, and only the body limit below holds).
So no answer here waits for a body it will not use: a refused request's unread body is dropped
by the protocol, under its timers, holding no slot.
"""

from __future__ import annotations

import asyncio
import logging
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.deadlines import Deadlines
from gateway.errors import GatewayError, InternalError, Overloaded, PayloadTooLarge, error_response_parts
from gateway.http.server_protocol import CALL_KEY, READ_REFUSED, ConnectionLimits
from gateway.ids import request_id
from gateway.pipeline.cleanup import CANCELLED, CLIENT_GONE, FAILED, SERVED, run_cleanups
from gateway.pipeline.context import Call
from gateway.pipeline.record import record_call
from gateway.resilience.backoff import retry_after_headers
from gateway.runtime import Gateway

_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_log = logging.getLogger("gateway.ingress")

# How long a request runs before the gateway starts watching for its client leaving.
WATCH_AFTER_S = 0.05


def _client_request_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"x-request-id":
            return value.decode("ascii") if _REQUEST_ID.match(value) else None
    return None


def _is_operations(path: str) -> bool:
    return path.startswith("/admin") or path in _QUIET_PATHS


def _ending(call: Call, watch: _DisconnectWatch, cancelled: bool) -> str:
    if watch.disconnected:
        return CLIENT_GONE
    if cancelled:
        return CANCELLED
    if call.error_type is not None or not 200 <= call.status < 400:
        return FAILED
    return SERVED


class IngressMiddleware:
    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway
        server = gateway.settings.server
        self.max_body_bytes = server.max_body_bytes
        rejected = gateway.metrics.rejected
        self.connection_limits = ConnectionLimits(
            max_head_bytes=server.max_head_bytes, max_headers=server.max_headers,
            head_timeout_s=server.head_timeout_s, body_timeout_s=server.body_timeout_s,
            min_body_rate_bytes_s=server.min_body_rate_bytes_s, max_body_bytes=server.max_body_bytes,
            send_timeout_s=server.send_timeout_s,
            refused=lambda reason: rejected.labels(reason).inc())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        call = Call(request_id=_client_request_id(headers) or request_id(), method=scope["method"],
                    path=scope["path"])
        scope[CALL_KEY] = call
        rid_header = (b"x-request-id", call.request_id.encode())
        started = False
        watch = _DisconnectWatch(receive, self.max_body_bytes, self.gateway.deadlines, call)

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                call.status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # From here on a disconnect is the client done with its answer, not giving up:
                # what still runs (settlement, the stream's accounting) must not be cancelled.
                watch.response_complete = True
            await send(message)

        path = scope["path"]
        call.cleanups.append(self._record_quiet if path in _QUIET_PATHS else self._record)
        # Operations traffic has its own pool: a flood of model calls must not lock out operators.
        operations = _is_operations(path)
        caps = self.gateway.admin_caps if operations else self.gateway.ingress_caps
        admitted = caps.try_enter() == "ok"
        if admitted:
            call.cleanups.append(self._leave_admin if operations else self._leave)
        cancelled = False
        try:
            if not admitted:
                self.gateway.metrics.rejected.labels("gateway_in_flight").inc()
                raise Overloaded("The gateway is at capacity; retry shortly.", headers=retry_after_headers(0.25))
            await self.app(scope, watch.receive, send_wrapper)
        except GatewayError as exc:
            await self._error(exc, call, started, send, watch)
        except asyncio.CancelledError:
            if not watch.disconnected:
                cancelled = True
                raise
            # Our own cancellation: the client left, and everything it started has been stopped.
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            call.client_disconnected = True
            # Or the protocol refused the body as it came (408, 431), and the app saw the client go.
            call.status = scope.get(READ_REFUSED, 499)
        except Exception:
            _log.exception("unhandled error", extra={"fields": {"request_id": call.request_id}})
            await self._error(InternalError("The gateway failed to process the request."), call, started, send, watch)
        finally:
            watch.stop()
            pending = run_cleanups(call, _ending(call, watch, cancelled))
            if pending is not None:
                await pending

    # -- the ingress's own clean-up steps (gateway/pipeline/cleanup.py) --------------------------
    def _leave(self, call: Call, ending: str) -> None:
        self.gateway.ingress_caps.leave()

    def _leave_admin(self, call: Call, ending: str) -> None:
        self.gateway.admin_caps.leave()

    def _record(self, call: Call, ending: str) -> None:
        gw = self.gateway
        record_call(call, gw.metrics, gw.access_log, gw.settings.pricing, gw.envelopes)

    def _record_quiet(self, call: Call, ending: str) -> None:
        gw = self.gateway
        record_call(call, gw.metrics, gw.access_log, gw.settings.pricing, gw.envelopes, quiet=True)

    async def _error(self, exc: GatewayError, call: Call, started: bool, send: Send, watch: _DisconnectWatch
                     ) -> None:
        call.error_type, call.error_code = type(exc).__name__, exc.error_code
        if started:
            return  # a streaming response reports its own errors in-band
        status, body, headers = error_response_parts(exc, call.request_id)
        headers += [(k, v) for k, v in call.extra_headers if k.decode() not in exc.headers]
        headers.append((b"content-length", b"%d" % len(body)))
        call.status = status
        # The call is over: a client that leaves while its clean-up waits must not cancel this task
        # (the cancellation would escape the app, the error answer unsent).
        watch.stop()
        pending = run_cleanups(call, FAILED)
        if pending is not None:
            await pending
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _DisconnectWatch:
    """The app's `receive`: enforces the body limit, then watches for the client leaving.

    Once the body has been read, a watcher task becomes the only reader of the connection; when
    the client disconnects it cancels the request's task, so an upstream call in flight (even
    one still waiting for the provider's first byte) is abandoned within WATCH_AFTER_S (plus the
    deadline sweep's interval) rather than at its timeout. Later `receive()` calls from the app wait
    for that same disconnect. The watcher starts only once a request has run for WATCH_AFTER_S: most
    answers are sent sooner, and an entry in the deadline sweep costs a fraction of a task.
    A request that only has left what the provider bills anyway (`Call.linger_s`: a stream past its
    finish reason, waiting for its usage) is given that long to end on its own before it is cancelled.
    """

    __slots__ = ("_body_done", "_call", "_deadlines", "_event", "_limit", "_receive", "_seen", "_task", "_timer",
                 "_watcher", "disconnected", "response_complete")

    def __init__(self, receive: Receive, limit: int, deadlines: Deadlines, call: Call) -> None:
        self._receive, self._limit, self._seen = receive, limit, 0
        self._call = call
        self._task = asyncio.current_task()
        self._watcher: asyncio.Task[None] | None = None
        self._deadlines = deadlines
        self._timer: int | None = None  # the watch's start, armed in the gateway's deadline sweep
        self._body_done = False
        self._event: asyncio.Event | None = None  # made only for a receive() after the body (rare)
        self.disconnected = False
        self.response_complete = False

    async def receive(self) -> Message:
        if self._body_done:
            # Only the watcher reads the connection now; a second reader waits for the disconnect.
            if self._event is None:
                self._event = asyncio.Event()
                if self.disconnected:
                    self._event.set()
            await self._event.wait()
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self._seen += len(message.get("body", b""))
            more = message.get("more_body", False)
            if self._seen > self._limit:
                # The rest of the body is dropped by the protocol, not read here: no slot waits for it.
                raise PayloadTooLarge(f"Request body exceeds the limit of {self._limit} bytes.")
            if not more:
                self._body_done = True
                self._timer = self._deadlines.add(asyncio.get_running_loop().time() + WATCH_AFTER_S,
                                                  self._start_watch)
        else:
            # The client left (or the protocol closed a body that came too slowly) before its body
            # was in: what arrived is not the request, so nothing may go on with it.
            self.disconnected = True
            raise asyncio.CancelledError
        return message

    def _start_watch(self) -> None:
        self._timer = None
        if not self.response_complete:
            self._watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                break
        if self.response_complete:
            return
        self.disconnected = True
        if self._event is not None:
            self._event.set()
        linger = self._call.linger_s
        if linger > 0:
            self._call.client_disconnected = True
            await asyncio.sleep(linger)  # `stop` cancels this wait when the request ends on its own
            if self.response_complete:
                return  # only its accounting still runs: it must not be cut short
        if self._task is not None:
            self._task.cancel()

    def stop(self) -> None:
        if self._timer is not None:
            self._deadlines.remove(self._timer)
            self._timer = None
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
        # The client left just as the request finished: withdraw the cancel nobody will catch.
        if self.disconnected and self._task is not None and self._task.cancelling():
            self._task.uncancel()
