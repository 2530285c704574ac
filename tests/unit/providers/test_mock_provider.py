"""The in-process mock provider serves n choices, each up to max_tokens, with usage for all (as OpenAI does)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway.errors import UpstreamRejected
from gateway.providers.mock import MockProvider
from gateway.settings import ProviderSettings

BODY = {"messages": [{"role": "user", "content": "a question long enough to be cut by max_tokens"}], "max_tokens": 3}


def _provider() -> MockProvider:
    return MockProvider("mock", ProviderSettings.model_validate({"kind": "mock"}))


def test_n_choices_with_usage_for_all() -> None:
    result = asyncio.run(_provider().chat({**BODY, "n": 4}, "mock-1", timeout_s=1))
    data = orjson.loads(result.body)
    assert len(data["choices"]) == 4 and {c["finish_reason"] for c in data["choices"]} == {"length"}
    assert result.usage.completion_tokens == 4 * 3

    async def stream() -> tuple[list[bytes], int]:
        s = await _provider().chat_stream({**BODY, "n": 4, "stream": True}, "mock-1", timeout_s=1, include_usage=True)
        chunks = [c async for c in s.chunks]
        return chunks, s.usage.completion_tokens

    chunks, completion = asyncio.run(stream())
    assert completion == 12
    assert {c["index"] for raw in chunks for c in orjson.loads(raw)["choices"]} == {0, 1, 2, 3}


@pytest.mark.parametrize("n", [0, 129, True])
def test_an_n_openai_refuses_is_refused(n: object) -> None:
    with pytest.raises(UpstreamRejected) as info:
        asyncio.run(_provider().chat({**BODY, "n": n}, "mock-1", timeout_s=1))
    assert info.value.param == "n"
