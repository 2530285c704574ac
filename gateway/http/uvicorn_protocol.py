"""uvicorn's httptools protocol, with a response's head checked in one pass and sent with its body.

It subclasses uvicorn's private classes and copies its parser callbacks (uvicorn 0.54): only
`server_protocol.http_protocol()` imports it, and only for a uvicorn in the range it was tested on.

uvicorn writes the status line and headers when the app sends `http.response.start`, and the body
on `http.response.body`: two send() calls, two TCP segments for the client to take in, for every
answer. Here the head waits until the body's first write joins it (the same task step, for every
answer the gateway gives), or until the end of the loop's current iteration if no body follows at
once. Writes are never reordered, only joined; nothing but the head is ever held back.

uvicorn also checks each response header with two regular expressions and lower-cases its name:
~3,000 instructions per header, a dozen headers per answer. `_LeanCycle` checks all names and all
values in one table lookup per byte instead, for a head of lower-case names it can write as it is;
any other head (upper-case names, a `connection` or `transfer-encoding` header, a bad byte) goes
to uvicorn's own code unchanged, which also raises its errors.

What reading a request may cost is bounded here, before the app (and so before auth or any
in-flight slot) sees it: a head must arrive within `head_timeout_s` in at most `max_head_bytes`
and `max_headers` headers (else 408 or 431), a declared body over `max_body_bytes` is answered 413
at once, and a body must keep a minimum rate (else 408). Each refusal is answered in OpenAI's
error shape with `connection: close`, counted, and followed by a bounded lingering close: what
the client still sends is read and dropped for at most LINGER_S (and `max_body_bytes`), so that
the answer is not lost to a reset, then the connection is closed. At most MAX_PIPELINED requests
may wait behind the one being answered: what a client pipelines past that is dropped, and the
connection closed once the queued ones are answered. An answer its client does not read for
`send_timeout_s` (the transport's buffer staying full) has its connection aborted.

One timer per connection, armed when it opens and re-armed only when it fires, watches all of it,
including the keep-alive idle timeout uvicorn would arm and cancel as a new timer per request. A
request only notes the loop's clock when its head begins and ends and when its answer is done; the
timer compares. Head bytes are counted per received chunk while a head is incomplete (httptools
keeps an unfinished header in memory, so this is what bounds it), and the exact size is computed
only for a head whose chunks went over the limit.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from gateway.errors import (
    BadRequest,
    GatewayError,
    HeaderFieldsTooLarge,
    PayloadTooLarge,
    RequestTimeout,
    error_response_parts,
)
from gateway.http.server_protocol import CALL_KEY, LIMITS_ATTRIBUTE, READ_REFUSED, ConnectionLimits
from gateway.ids import request_id

_HEAD_START = b"HTTP/"


class _HeadJoiningTransport:
    """The connection's transport as uvicorn sees it: a response head is held for its body."""

    __slots__ = ("_flush_scheduled", "_head", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head = b""
        self._flush_scheduled = False

    def write(self, data: bytes) -> None:
        if self._head:
            data, self._head = self._head + data, b""
            self._transport.write(data)
        elif data.startswith(_HEAD_START):
            self._head = data
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._head:
            data, self._head = self._head, b""
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


# What a head may hold without uvicorn's look at it: lower-case token characters in names (RFC 9110),
# and in values anything but the control characters uvicorn refuses (it allows tab and bytes >= 0x80).
_NAME_BYTES = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
_VALUE_BYTES = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])
# Header names already found good: the gateway sends the same few dozen, and a set lookup costs less
# than looking at their bytes again. Bounded, and only ever holds names that passed the check.
_checked_names: set[bytes] = set()
_MAX_CHECKED_NAMES = 512


class _LeanCycle(RequestResponseCycle):
    """uvicorn's request/response cycle; only the response head of the common case is made here."""

    async def send(self, message: ASGISendEvent) -> None:
        if (message["type"] == "http.response.start" and not self.response_started and self.keep_alive
                and not self.access_log and not self.disconnected and not self.flow.write_paused):
            head = self._head(message["status"], [*self.default_headers, *message.get("headers", ())])
            if head is not None:
                self.response_started = True
                self.waiting_for_100_continue = False
                self.transport.write(head)
                return
        await super().send(message)

    def _head(self, status: int, headers: list[tuple[bytes, bytes]]) -> bytes | None:
        """What uvicorn would write for this head (and its state set as uvicorn sets it), or None to let it."""
        if not headers:
            return None
        # Every step is one C call over all headers: no Python bytecode runs per header.
        names, values = zip(*headers, strict=True)
        if not _checked_names.issuperset(names):
            if b"".join(names).translate(None, _NAME_BYTES):
                return None
            if len(_checked_names) < _MAX_CHECKED_NAMES:
                _checked_names.update(names)
        if (b"".join(values).translate(None, _VALUE_BYTES) or b"transfer-encoding" in names
                or b"connection" in names):
            return None
        lines = b"\r\n".join(map(b": ".join, headers))
        if b"content-length" in names:
            length = values[names.index(b"content-length")]  # the first one, as uvicorn
            if not length.isdigit():
                return None  # uvicorn's int() raises on it
            self.expected_content_length = int(length)
            self.chunked_encoding = False
        elif self.scope["method"] != "HEAD" and status not in (204, 304):
            self.chunked_encoding = True
            return STATUS_LINE[status] + lines + b"\r\ntransfer-encoding: chunked\r\n\r\n"
        return STATUS_LINE[status] + lines + b"\r\n\r\n"


# How long a refused connection's further input is read and dropped before it is closed.
LINGER_S = 2.0
# An answered request's unread body is dropped (keeping the connection) up to this many times max_body_bytes.
_DROP_AT_MOST = 16
# Requests a connection may have waiting behind the one being answered (HTTP/1.1 pipelining). uvicorn
# queues every request parsed from what was read, and one read of 256 KiB holds thousands of tiny
# ones, each ~1.4 KB of cycle and scope: 200 KB of `GET /healthz` was 8 MB of memory, 100 such
# connections 840 MB, growing while their answers went unread. Past this, the requests already
# queued are answered, the last of them with `connection: close`, and the rest is dropped.
MAX_PIPELINED = 32
# What the connection is reading: a head, a body, nothing (between requests), or nothing more (refused).
_HEAD, _BODY, _BETWEEN, _LINGER = 0, 1, 2, 3


class _Refused(Exception):
    """Raised in a parser callback once the request is answered: it stops the parser."""


def _limits_of(app: Any) -> ConnectionLimits:
    """The app's limits, through the middlewares uvicorn may wrap it in (each keeps it as `.app`)."""
    for _ in range(8):
        limits = getattr(app, LIMITS_ATTRIBUTE, None)
        if isinstance(limits, ConnectionLimits):
            return limits
        app = getattr(app, "app", None)
        if app is None:
            break
    return ConnectionLimits()


class GatewayHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's protocol with the joined response head, the lean cycle, and the request read limits."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = _limits_of(self.app)
        self._reading = _HEAD
        self._since = 0.0  # when what is being read (or the idle wait) began, on the loop's clock
        self._chunk = 0  # the size of the chunk being parsed
        # What the head (or the body: framing and trailers included) took in earlier chunks: an
        # over-estimate, see the module doc.
        self._wire_bytes = 0
        self._body_bytes = 0
        self._linger_left = 0
        self._content_length: bytes | None = None
        self._write_paused_at = 0.0  # when the client last stopped taking what is written to it
        # The answer to a request refused while an earlier one (pipelined) was still being answered.
        self._refused_next: tuple[GatewayError, str] | None = None
        self._timer: asyncio.TimerHandle | None = None
        # The timer never sleeps longer than this, so a deadline that starts while it sleeps (a
        # head after an idle wait, a body after its head, a client that stops reading) is never
        # passed by more than this.
        self._max_sleep = min(self.limits.head_timeout_s, self.limits.body_timeout_s, self.limits.send_timeout_s)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_HeadJoiningTransport(transport, self.loop))  # type: ignore[arg-type]
        # A new connection's first head is due head_timeout_s after it opens, not after its first byte.
        self._since = self.loop.time()
        self._timer = self.loop.call_at(self._since + self._max_sleep, self._check)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's, but a refusal raised in a parser callback is not an invalid request, and there
        # is no keep-alive timer to cancel.
        if self._reading == _LINGER:
            self._linger_left -= len(data)
            if self._linger_left < 0:
                self.transport.close()
            return
        self._chunk = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _Refused):
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        reading = self._reading
        if reading == _HEAD:
            self._wire_bytes += self._chunk
            if self._wire_bytes > self.limits.max_head_bytes:
                self._refuse(HeaderFieldsTooLarge(
                    f"The request head exceeds the limit of {self.limits.max_head_bytes} bytes."), "head_too_large")
        elif reading == _BODY:
            # A chunked body's framing and trailers are not body: httptools keeps an unfinished
            # trailer in memory and uvicorn appends finished ones to the headers. Bounded by the
            # body's own size (framing of one-byte chunks is 5 bytes each), the head's limits, and
            # the header count.
            self._wire_bytes += self._chunk
            limits = self.limits
            if (self._wire_bytes > 6 * self._body_bytes + 2 * limits.max_head_bytes
                    or len(self.headers) > limits.max_headers):
                self._refuse_body(HeaderFieldsTooLarge(
                    "The request's chunk framing or trailers exceed the head's limits."), "trailers_too_large")
            elif self._body_bytes > _DROP_AT_MOST * limits.max_body_bytes and self.cycle.response_complete:
                # Answered already (a 413 for a chunked body, a 401): dropping a body is not worth
                # more than this, however fast it comes; the connection is closed instead.
                self._refuse(None, "body_too_large")

    # The parser callbacks below are uvicorn's own (0.54), with the limits' counting added in line:
    # they run for every request, and calling uvicorn's through super() would cost a frame each.
    # tests/unit/http/test_request_read_limits.py checks they give the app what uvicorn's give it.
    def on_message_begin(self) -> None:
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.scope = {  # type: ignore[typeddict-item]
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,  # type: ignore[typeddict-item]
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
        }
        if self._reading != _HEAD:  # a new connection's first head keeps the connection's clock
            self._reading = _HEAD
            self._since = self.loop.time()
        self._wire_bytes = 0
        self._content_length = None

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length":
            self._content_length = value  # llhttp has checked it is one well-formed number
        elif name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        limits = self.limits
        if self.pipeline and len(self.pipeline) >= MAX_PIPELINED:
            self._refuse_in_parser(None, "too_many_pipelined")
        if len(self.headers) > limits.max_headers:
            self._refuse_in_parser(HeaderFieldsTooLarge(
                f"The request has more than {limits.max_headers} headers."), "too_many_headers")
        if self._wire_bytes + self._chunk > limits.max_head_bytes and self._head_size() > limits.max_head_bytes:
            self._refuse_in_parser(HeaderFieldsTooLarge(
                f"The request head exceeds the limit of {limits.max_head_bytes} bytes."), "head_too_large")
        if self._content_length is not None and int(self._content_length) > limits.max_body_bytes:
            self._refuse_in_parser(PayloadTooLarge(
                f"Request body of {int(self._content_length)} bytes exceeds the limit of "
                f"{limits.max_body_bytes} bytes."), "body_too_large")
        super().on_headers_complete()
        self._reading, self._since, self._body_bytes, self._wire_bytes = _BODY, self.loop.time(), 0, 0
        # The cycle was just made and its task not yet run: it becomes the lean kind before its first send.
        if type(self.cycle) is RequestResponseCycle:
            self.cycle.__class__ = _LeanCycle

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if (self.parser.should_upgrade() and self._should_upgrade()) or self.cycle.response_complete:
            return
        self.cycle.body += body
        if len(self.cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        self.cycle.message_event.set()

    def on_message_complete(self) -> None:
        self._reading = _BETWEEN
        if (self.parser.should_upgrade() and self._should_upgrade()) or self.cycle.response_complete:
            self._since = self.loop.time()  # answered before its body was in: idle from now
            return
        self.cycle.more_body = False
        self.cycle.message_event.set()

    def on_response_complete(self) -> None:
        # uvicorn's, with the keep-alive timeout left to the connection's one timer.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._reading == _BETWEEN:
            self._since = self.loop.time()  # idle from now
        elif self._refused_next is not None:  # a request refused while this one was answered
            self._write_error(*self._refused_next)
            self._refused_next = None
            self._end_of_answers()
            self._since = self.loop.time()  # the linger starts now

    def pause_writing(self) -> None:
        # Only when the transport's buffer is over its high-water mark: never on a request's usual path.
        super().pause_writing()
        self._write_paused_at = self.loop.time()

    # -- the timer ------------------------------------------------------------------------------
    def _check(self) -> None:
        self._timer = None
        now = self.loop.time()
        limits, reading = self.limits, self._reading
        if self.flow.write_paused and now - self._write_paused_at >= limits.send_timeout_s:
            # The client has not read its answer for send_timeout_s: what is buffered for it will
            # not be flushed, so the connection is aborted, not closed; the app sees it gone.
            limits.refused("send_timeout")
            self.transport.abort()  # type: ignore[attr-defined]
            return
        if reading == _HEAD:
            due = self._since + limits.head_timeout_s
            if now >= due:
                if self._wire_bytes or self._chunk:
                    self._refuse(RequestTimeout(
                        f"The request head did not arrive within {limits.head_timeout_s:g} s."), "head_timeout")
                else:  # a connection that never sent a byte is closed without a word
                    limits.refused("head_timeout")
                    self.transport.close()
                return
        elif reading == _BODY:
            if self.flow.read_paused or self.pipeline:
                # Not reading (the app has not taken what came, or an earlier request is being
                # answered): the client cannot be late; its clock moves so that it is due a whole
                # body_timeout_s after reading resumes.
                self._since = now - self._body_bytes / limits.min_body_rate_bytes_s
                due = now + limits.body_timeout_s
            else:
                due = self._since + limits.body_timeout_s + self._body_bytes / limits.min_body_rate_bytes_s
                if now >= due:
                    self._refuse_body(RequestTimeout(
                        f"The request body came slower than {limits.min_body_rate_bytes_s} bytes/s after "
                        f"{limits.body_timeout_s:g} s."), "body_timeout")
                    return
        elif reading == _BETWEEN:
            if self._busy() is None:
                due = self._since + self.timeout_keep_alive
                if now >= due:
                    if not self.flow.write_paused:
                        self.transport.close()
                        return
                    # A close would wait for the unread answer to flush: the send timeout ends it.
                    due = self._write_paused_at + limits.send_timeout_s
            else:  # a request is being answered: its own deadlines bound it
                due = now + self.timeout_keep_alive
        else:
            due = self._since + LINGER_S
            if now >= due:
                if self._busy() is None:
                    self.transport.close()
                    return
                due = now + LINGER_S
        self._timer = self.loop.call_at(min(due, now + self._max_sleep), self._check)

    def _refuse_body(self, exc: GatewayError, reason: str) -> None:
        """Refuse the request whose body is being read; the app may be waiting for that body."""
        cycle = self.cycle
        if cycle.response_started:  # answered without its body (a 401, a 503): nothing more to say
            self._refuse(None, reason)
            return
        # The app now sees the client gone and sends nothing; the ingress logs the status sent here.
        cycle.scope[READ_REFUSED] = exc.status  # type: ignore[literal-required]
        cycle.disconnected = True
        cycle.message_event.set()
        call = cycle.scope.get(CALL_KEY)  # type: ignore[misc]
        self._refuse(exc, reason, getattr(call, "request_id", None))

    # -- refusing ------------------------------------------------------------------------------
    def _busy(self) -> RequestResponseCycle | None:
        """The last request still to be answered on this connection, if any."""
        if self.pipeline:
            return self.pipeline[0][0]
        cycle = self.cycle
        return cycle if cycle is not None and not cycle.response_complete and not cycle.disconnected else None

    def _head_size(self) -> int:
        """The head's size as sent, request line, headers and the blank line, when written with one space
        after each colon (only for a head that may be over the limit)."""
        return (len(self.parser.get_method()) + len(self.url) + 14  # "M url HTTP/1.1\r\n" and the last "\r\n"
                + sum(len(name) + len(value) + 4 for name, value in self.headers))

    def _write_error(self, exc: GatewayError, rid: str | None = None) -> None:
        """Answer `exc` in OpenAI's error shape with `connection: close` (the connection's last answer)."""
        status, body, headers = error_response_parts(exc, rid or request_id())
        parts = [STATUS_LINE[status]]
        for name, value in (*self.server_state.default_headers, *headers,
                            (b"content-length", b"%d" % len(body)), (b"connection", b"close")):
            parts += (name, b": ", value, b"\r\n")
        parts += (b"\r\n", body)
        self.transport.write(b"".join(parts))

    def _end_of_answers(self) -> None:
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request it cannot parse, in OpenAI's error shape (uvicorn's is text/plain)."""
        self._write_error(BadRequest(msg, code="invalid_http_request"))
        self.transport.close()

    def _refuse_in_parser(self, exc: GatewayError | None, reason: str) -> None:
        self._refuse(exc, reason)
        raise _Refused  # stops the parser; data_received knows it

    def _refuse(self, exc: GatewayError | None, reason: str, rid: str | None = None) -> None:
        """Count the refusal, answer `exc` with `connection: close`, and close after a bounded linger.

        With a request still being answered on the connection (an earlier one, pipelined), `exc`
        is answered once it is (without `exc`, that answer is the connection's last); with no
        `exc` and nothing to answer, the connection is closed at once."""
        self.limits.refused(reason)
        busy = self._busy()
        if busy is not None:
            if exc is None:
                busy.keep_alive = False
            else:
                self._refused_next = (exc, rid or request_id())
        elif exc is None:
            self.transport.close()
            return
        else:
            self._write_error(exc, rid)
            self._end_of_answers()
        self._reading, self._since, self._linger_left = _LINGER, self.loop.time(), self.limits.max_body_bytes
        self.flow.resume_reading()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(self._since + LINGER_S, self._check)
