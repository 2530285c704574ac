"""The one engine that speaks HTTP to providers, applying a `Dialect`.

One pooled `transport.Origin` per provider, opened at start-up (see transport.py for why not a
general-purpose client). Low-level failures are mapped to the public error tree here and only here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Iterator
from typing import Any, NoReturn

from gateway.errors import (
    GatewayError,
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    dumps_forwarded,
    scrub,
    scrub_error,
    scrub_field,
)
from gateway.providers.base import ChatResult, ChatStream, Dialect, EmbeddingsResult, Provider, StreamTranslator
from gateway.providers.transport import Origin, Response, TransportError
from gateway.resilience.backoff import parse_retry_after, retry_after_headers
from gateway.settings import ProviderSettings

_NOT_RETRYABLE = {400, 404, 413, 422}
# Of an error answer only this much is read (its message is shown at most 1,024 characters, and
# scrubbed from at most twice that): a longer one is not buffered (up to the 64 MiB of an answer,
# a 20 MB error body took 56 MB), its connection is closed and its message is not known.
MAX_ERROR_BODY_BYTES = 1024 * 1024
# The longest line a provider's event stream may send (one event's data: a whole answer in one event
# is far less); a longer one is a bad answer, not something to keep buffering.
MAX_EVENT_LINE_BYTES = 8 * 1024 * 1024


class HttpProvider(Provider):
    def __init__(self, name: str, settings: ProviderSettings, dialect: Dialect) -> None:
        super().__init__(name, settings)
        self.dialect = dialect
        self._origin: Origin | None = None

    async def start(self) -> None:
        if self.settings.base_url is None:
            raise RuntimeError(f"provider {self.name} has no base_url")
        headers = {"content-type": "application/json", "accept": "*/*",
                   **self.dialect.auth_headers(self.settings), **self.settings.headers}
        self._origin = Origin(self.settings.base_url, headers, max_connections=self.settings.max_connections,
                              connect_timeout_s=self.settings.connect_timeout_s)

    async def aclose(self) -> None:
        if self._origin is not None:
            await self._origin.aclose()
            self._origin = None

    @property
    def origin(self) -> Origin:
        if self._origin is None:
            raise RuntimeError(f"provider {self.name} used before start()")
        return self._origin

    # -- chat ------------------------------------------------------------------------------
    async def chat(self, body: dict[str, Any], model: str, *, timeout_s: float) -> ChatResult:
        payload = dumps_forwarded(self.dialect.encode_chat(body, model, self.settings))
        raw = await self._post(self.dialect.chat_url(self.settings, model), payload, timeout_s)
        return self.dialect.decode_chat(raw, model)

    async def embeddings(self, body: dict[str, Any], model: str, *, timeout_s: float) -> EmbeddingsResult:
        url = self.dialect.embeddings_url(self.settings, model)
        if url is None:
            raise UpstreamRejected(f"provider '{self.name}' has no embeddings API", param="model")
        payload = dumps_forwarded(self.dialect.encode_embeddings(body, model, self.settings))
        raw = await self._post(url, payload, timeout_s)
        return self.dialect.decode_embeddings(raw, model)

    async def _post(self, url: str, payload: bytes, timeout_s: float) -> bytes:
        try:
            resp = await self.origin.request("POST", url, payload,
                                             deadline=asyncio.get_running_loop().time() + timeout_s)
            raw = await resp.read() if resp.status < 400 else await resp.read(MAX_ERROR_BODY_BYTES)
        except (TimeoutError, TransportError) as e:
            raise self._mapped(e, f"did not answer within {timeout_s:g}s", "is unreachable") from None
        if resp.status >= 400:
            self._raise_for(resp.status, raw, resp.headers)
        return raw

    async def chat_stream(self, body: dict[str, Any], model: str, *, timeout_s: float,
                          include_usage: bool) -> ChatStream:
        payload = dumps_forwarded(self.dialect.encode_chat(body, model, self.settings))
        url = self.dialect.chat_url(self.settings, model)
        # The deadline bounds the wait for the response head; after that, each read may idle
        # at most timeout_s (a stream may legitimately last longer than one timeout).
        with self._mapped_errors(f"did not answer within {timeout_s:g}s", "is unreachable"):
            resp = await self.origin.request("POST", url, payload,
                                             deadline=asyncio.get_running_loop().time() + timeout_s)
            if resp.status >= 400:
                raw = await resp.read(MAX_ERROR_BODY_BYTES)
            else:
                resp.clear_deadline()
        if resp.status >= 400:
            self._raise_for(resp.status, raw, resp.headers)
        translator = self.dialect.stream_translator(model, include_usage)

        async def close() -> None:
            resp.close()

        return ChatStream(chunks=self._relay(resp, translator, timeout_s), translator=translator, close=close)

    async def _relay(self, resp: Response, translator: StreamTranslator,
                     idle_timeout_s: float) -> AsyncGenerator[bytes, None]:
        """Server-sent events from the upstream -> OpenAI chunk payloads.

        The lines of a multi-line `data:` field (a server that pretty-prints its JSON) are joined by
        a space where the SSE spec joins them by a newline: every payload here is JSON, where both
        are the same whitespace, and a chunk relayed as it came then stays one `data:` line for
        the client (a newline in it would end the client's field early).
        """
        event: str | None = None
        data: list[bytes] = []
        complete = False
        # An incomplete last line waits for the next chunk, kept in the pieces it came in: joining
        # them chunk by chunk copied a long line again for every chunk (a 64 MB line held the event
        # loop for seconds and took 350 MB), and its length is bounded.
        pending: list[bytes] = []
        pending_bytes = 0
        try:
            with self._mapped_errors("stalled mid-stream", "broke the stream"):
                async for chunk in resp.iter_chunks(idle_timeout_s):
                    if b"\n" not in chunk:
                        pending.append(chunk)
                        pending_bytes += len(chunk)
                        lines = []
                    else:
                        if pending:
                            pending.append(chunk)
                            chunk = b"".join(pending)
                        lines = chunk.split(b"\n")
                        last = lines.pop()
                        pending, pending_bytes = ([last], len(last)) if last else ([], 0)
                    if pending_bytes > MAX_EVENT_LINE_BYTES:
                        raise UpstreamBadResponse(
                            f"provider '{self.name}' sent a stream line over {MAX_EVENT_LINE_BYTES} bytes")
                    for raw_line in lines:
                        line = raw_line.rstrip(b"\r")
                        if line:
                            if line.startswith(b"data:"):
                                data.append(line[6:] if line[5:6] == b" " else line[5:])
                            elif line.startswith(b"event:"):
                                event = line[6:].strip().decode("utf-8", "replace")
                            continue  # comments (":"), id: and retry: lines carry nothing for us
                        if data:
                            for out in translator.feed(event, b" ".join(data)):
                                yield out
                        event, data = None, []
                line = b"".join(pending).rstrip(b"\r")
                if line.startswith(b"data:"):
                    data.append(line[6:] if line[5:6] == b" " else line[5:])
                if data:
                    for out in translator.feed(event, b" ".join(data)):
                        yield out
                if translator.finish_reason is None:
                    raise UpstreamBadResponse(f"provider '{self.name}' ended the stream before it finished")
                for out in translator.finish():
                    yield out
                complete = True
        finally:
            # A finished stream returns its connection to the pool; an abandoned one is closed
            # so the upstream stops generating (and billing) for a client that left.
            if complete:
                resp.release()
            else:
                resp.close()

    # -- errors ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _mapped_errors(self, on_timeout: str, on_connection: str) -> Iterator[None]:
        try:
            yield
        except GatewayError as e:
            # Errors a provider sent mid-stream carry its words: scrubbed of this provider's key too.
            raise scrub_error(e, self.settings.api_key) from None
        except (TimeoutError, TransportError) as e:
            raise self._mapped(e, on_timeout, on_connection) from None

    def _mapped(self, error: TimeoutError | TransportError, on_timeout: str, on_connection: str) -> GatewayError:
        """The one place low-level client failures become the public error tree."""
        if isinstance(error, TimeoutError):
            return UpstreamTimeout(f"provider '{self.name}' {on_timeout}")
        return UpstreamUnavailable(f"provider '{self.name}' {on_connection} ({error})")

    def _raise_for(self, status: int, raw: bytes, headers: Any) -> NoReturn:
        # Everything the provider says may reach the client, the log and the ledger: the message,
        # param and code are scrubbed of credentials (its own key by value) and bounded.
        message, param, code = self.dialect.error_message(status, raw)
        key = self.settings.api_key
        message, param, code = scrub(message, key), scrub_field(param, key), scrub_field(code, key)
        if status in (401, 403):
            # The provider refused the gateway's credentials: never the client's fault, and the
            # provider's text (which may quote the key) is not passed on.
            raise UpstreamAuthFailed(f"provider '{self.name}' rejected the gateway's credentials")
        if status == 429:
            # The wait the provider asks for, said as the gateway's own 429s say it (whole seconds and
            # milliseconds, capped at a year): its header values are not passed on as they came, so
            # nothing but a number (never a quoted key, never 20 digits) reaches the client.
            delay = parse_retry_after(headers)
            out = retry_after_headers(delay) if delay is not None else {}
            raise UpstreamRateLimited(f"provider '{self.name}' is rate limiting: {message}", headers=out)
        if status in _NOT_RETRYABLE:
            raise UpstreamRejected(message, status=status, param=param, code=code)
        # 408, 409 and every 5xx (Anthropic's 529 included): the provider's trouble, worth a retry.
        raise UpstreamError(f"provider '{self.name}' failed with HTTP {status}: {message}")
