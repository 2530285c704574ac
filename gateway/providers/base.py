"""What a provider is to the rest of the gateway.

A provider kind is mostly data: a `Dialect` says how its API is spoken (URLs, auth headers,
and the translation of requests, responses, stream events and errors to and from OpenAI's
shape). One generic engine (`gateway.providers.http.HttpProvider`) applies a dialect over a
pooled HTTP client. An OpenAI-compatible provider is the identity dialect plus a base URL.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

from gateway.errors import UPSTREAM_FIELD_CHARS, UpstreamBadResponse, scrub
from gateway.settings import ProviderSettings


@dataclass(slots=True)
class Usage:
    """Tokens of one call as OpenAI counts them: prompt_tokens includes the cached (read from the
    provider's prompt cache) and the cache-write tokens (written into it, which Anthropic bills
    above the input price); cache_write_1h_tokens are the part of the writes kept for an hour."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    # False when the provider did not report usage and the numbers are the gateway's estimate.
    reported: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@lru_cache(maxsize=256)  # a provider serves few model names
def _scrubbed_name(name: str) -> str:
    return scrub(name, limit=UPSTREAM_FIELD_CHARS)


def served_model_name(value: Any) -> str | None:
    """The model a provider says it served, as the client, the log and the ledger may see it: a string
    scrubbed of anything that looks like a credential and bounded; anything else is None."""
    if not isinstance(value, str):
        return None
    return _scrubbed_name(value[: 2 * UPSTREAM_FIELD_CHARS])


# More tokens than any call can have: a count above it is a broken report, not usage to bill.
MAX_REPORTED_TOKENS = 2**40


def reported_tokens(obj: Mapping[str, Any], key: str) -> int:
    """A token count from a provider's usage object (absent: 0). Anything but a whole number in
    [0, 2**40] is a broken answer (UpstreamBadResponse, a 502): never a crash, a negative spend,
    or a count too large for the ledger."""
    v = obj.get(key)
    if v is None:
        return 0
    if type(v) is int and 0 <= v <= MAX_REPORTED_TOKENS:
        return v
    if type(v) is float and v.is_integer() and 0 <= v <= MAX_REPORTED_TOKENS:
        return int(v)
    raise UpstreamBadResponse(f"the provider reported an impossible usage.{key}")


@dataclass(slots=True)
class ChatResult:
    """A finished non-streaming chat completion, already in OpenAI's shape."""

    body: bytes  # the JSON body for the client
    usage: Usage
    served_model: str | None = None
    finish_reason: str | None = None


@dataclass(slots=True)
class EmbeddingsResult:
    body: bytes
    usage: Usage
    served_model: str | None = None


class StreamTranslator(Protocol):
    """Turns one provider's stream events into OpenAI chat.completion.chunk payloads.

    `feed` receives each server-sent event (its `event:` name, or None, and its `data:` bytes)
    and returns zero or more JSON payloads to send to the client as `data: <payload>`.
    `usage` is filled in as the provider reports it. `finish` is called once at the end of
    the upstream stream and returns any last payloads (e.g. the usage chunk).
    """

    usage: Usage
    served_model: str | None
    finish_reason: str | None

    def feed(self, event: str | None, data: bytes) -> list[bytes]: ...

    def finish(self) -> list[bytes]: ...


class Dialect(ABC):
    """How one API family is spoken. Pure functions of their inputs: no I/O, no state."""

    @abstractmethod
    def chat_url(self, settings: ProviderSettings, model: str) -> str: ...

    def embeddings_url(self, settings: ProviderSettings, model: str) -> str | None:
        """None when the provider has no embeddings API."""
        return None

    @abstractmethod
    def auth_headers(self, settings: ProviderSettings) -> dict[str, str]: ...

    @abstractmethod
    def encode_chat(self, body: dict[str, Any], model: str, settings: ProviderSettings) -> dict[str, Any]:
        """The upstream request body for an OpenAI-shaped chat body (already validated).

        May raise `gateway.errors.BadRequest` (with `param`) for what the provider cannot express.
        """

    @abstractmethod
    def decode_chat(self, raw: bytes, requested_model: str) -> ChatResult:
        """The upstream's successful response -> an OpenAI chat.completion body and its usage.

        Raises `gateway.errors.UpstreamBadResponse` when the body is not what the API promises.
        """

    @abstractmethod
    def stream_translator(self, requested_model: str, include_usage: bool) -> StreamTranslator: ...

    def encode_embeddings(self, body: dict[str, Any], model: str, settings: ProviderSettings) -> dict[str, Any]:
        return {**body, "model": model}

    def decode_embeddings(self, raw: bytes, requested_model: str) -> EmbeddingsResult:
        raise NotImplementedError

    @abstractmethod
    def error_message(self, status: int, raw: bytes) -> tuple[str, str | None, str | None]:
        """(message, param, code) from an upstream error body; the engine redacts secrets after."""


@dataclass(slots=True)
class ChatStream:
    """An upstream stream that has answered 2xx; iterate it for `data:` payloads in OpenAI's shape."""

    chunks: AsyncGenerator[bytes, None]
    translator: StreamTranslator
    close: Any = field(default=None)  # async callable releasing the upstream connection

    @property
    def usage(self) -> Usage:
        return self.translator.usage

    async def aclose(self) -> None:
        await self.chunks.aclose()
        if self.close is not None:
            await self.close()


class Provider(ABC):
    """A configured provider instance: one per entry of `providers:`, owning its pooled client."""

    def __init__(self, name: str, settings: ProviderSettings) -> None:
        self.name = name
        self.settings = settings

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open pooled clients; called once inside the running event loop."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Close pooled clients; called once at shutdown."""

    @abstractmethod
    async def chat(self, body: dict[str, Any], model: str, *, timeout_s: float) -> ChatResult: ...

    @abstractmethod
    async def chat_stream(self, body: dict[str, Any], model: str, *, timeout_s: float,
                          include_usage: bool) -> ChatStream:
        """Open the stream and return once the upstream answered 2xx (errors raise before)."""

    @abstractmethod
    async def embeddings(self, body: dict[str, Any], model: str, *, timeout_s: float) -> EmbeddingsResult: ...
