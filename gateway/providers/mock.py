"""The built-in `mock` provider: deterministic answers in process, no network.

It gives a newcomer an answer with no provider key and gives load tests an upstream that costs
nothing; its answers are the same as `gateway mock-upstream` serves over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import orjson

from gateway.errors import NestingTooDeep, UpstreamRejected
from gateway.mock_upstream import answers
from gateway.mock_upstream.core import Refused
from gateway.providers.base import ChatResult, ChatStream, EmbeddingsResult, Provider
from gateway.providers.openai import OpenAIStreamTranslator, usage_from_openai


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """What the mock upstream answers 400 becomes what an HTTP provider's 400 becomes."""
    try:
        yield
    except Refused as e:
        if e.code == "nesting_too_deep":
            raise NestingTooDeep() from None
        raise UpstreamRejected(e.message, param=e.param, code=e.code) from None
    except ValueError as e:  # an embeddings input OpenAI would reject
        raise UpstreamRejected(str(e), param="input") from None


class MockProvider(Provider):
    async def _pause(self) -> None:
        if self.settings.mock_latency_ms:
            await asyncio.sleep(self.settings.mock_latency_ms / 1000)

    async def chat(self, body: dict[str, Any], model: str, *, timeout_s: float) -> ChatResult:
        await self._pause()
        _check_choices(body)
        with _refusals():
            data = answers.chat_completion(body, model=model)
        choice = data["choices"][0] if data.get("choices") else {}
        return ChatResult(body=orjson.dumps(data), usage=usage_from_openai(data.get("usage")),
                          served_model=model, finish_reason=choice.get("finish_reason"))

    async def chat_stream(self, body: dict[str, Any], model: str, *, timeout_s: float,
                          include_usage: bool) -> ChatStream:
        await self._pause()
        _check_choices(body)
        with _refusals():
            chunks = answers.chat_chunks(body, model=model, include_usage=True)
        translator = OpenAIStreamTranslator(include_usage)

        async def relay() -> AsyncGenerator[bytes, None]:
            for chunk in chunks:
                for out in translator.feed(None, orjson.dumps(chunk)):
                    yield out

        return ChatStream(chunks=relay(), translator=translator)

    async def embeddings(self, body: dict[str, Any], model: str, *, timeout_s: float) -> EmbeddingsResult:
        await self._pause()
        with _refusals():
            data = answers.embeddings_response(body, model=model, dims=self.settings.mock_embedding_dims)
        return EmbeddingsResult(body=orjson.dumps(data), usage=usage_from_openai(data.get("usage")),
                                served_model=model)


def _check_choices(body: dict[str, Any]) -> None:
    """n choices are served (each up to max_tokens, usage for all), as OpenAI does; an `n` OpenAI
    refuses is refused the same way."""
    try:
        answers.check_choices(body)
    except ValueError as e:
        raise UpstreamRejected(str(e), param="n") from None
