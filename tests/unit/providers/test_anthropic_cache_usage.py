"""Anthropic's prompt-cache usage in both dialects: reads and writes kept apart, writes split by lifetime.

Anthropic reports `input_tokens` (uncached), `cache_read_input_tokens`, `cache_creation_input_tokens`
and, since the 1-hour cache, `cache_creation: {ephemeral_5m_input_tokens, ephemeral_1h_input_tokens}`
(anthropic SDK: types/usage.py, types/cache_creation.py). OpenAI's prompt_tokens is their sum.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.errors import UpstreamBadResponse
from gateway.providers.anthropic import AnthropicDialect
from gateway.providers.anthropic_stream import update_usage
from gateway.providers.base import Usage
from tests.unit.providers.test_anthropic import anthropic_message, message_start, run_stream, text_block

SPLIT = {"ephemeral_5m_input_tokens": 300, "ephemeral_1h_input_tokens": 1200}


@pytest.fixture(scope="module")
def dialect() -> AnthropicDialect:
    return AnthropicDialect()


def usage_of(raw: dict[str, Any]) -> tuple[int, int, int, int]:
    u = Usage()
    update_usage(u, raw)
    return u.prompt_tokens, u.cached_tokens, u.cache_write_tokens, u.cache_write_1h_tokens


def test_decode_counts_cache_writes_apart_by_lifetime(dialect: AnthropicDialect) -> None:
    raw = anthropic_message([{"type": "text", "text": "ok"}], cache_read_input_tokens=1000,
                            cache_creation_input_tokens=1500, cache_creation=SPLIT)  # type: ignore[arg-type]
    result = dialect.decode_chat(raw, "route")
    u = result.usage
    assert (u.prompt_tokens, u.cached_tokens, u.cache_write_tokens, u.cache_write_1h_tokens) == (2510, 1000, 1500, 1200)
    # The client still sees OpenAI's shape: writes are prompt tokens like any other.
    assert orjson.loads(result.body)["usage"] == {"prompt_tokens": 2510, "completion_tokens": 5, "total_tokens": 2515,
                                                  "prompt_tokens_details": {"cached_tokens": 1000}}


@pytest.mark.parametrize(("raw", "expected"), [
    # without the split, writes are 5-minute writes (Anthropic's default lifetime)
    ({"input_tokens": 10, "cache_creation_input_tokens": 200}, (210, 0, 200, 0)),
    # a split adding up to more than the total: the larger is billed, and counted in the prompt
    ({"input_tokens": 10, "cache_creation_input_tokens": 100, "cache_creation": SPLIT}, (1510, 0, 1500, 1200)),
    # the split alone
    ({"input_tokens": 10, "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 7}},
     (17, 0, 7, 7)),
    ({"input_tokens": 10, "cache_creation": None}, (10, 0, 0, 0)),
])
def test_usage_folds_every_token_field(raw: dict[str, Any], expected: tuple[int, int, int, int]) -> None:
    assert usage_of(raw) == expected


@pytest.mark.parametrize("split", [[1, 2], "1h", {"ephemeral_1h_input_tokens": -1},
                                   {"ephemeral_5m_input_tokens": 2**41}, {"ephemeral_1h_input_tokens": 1.5}])
def test_an_impossible_split_is_a_bad_answer(dialect: AnthropicDialect, split: Any) -> None:
    raw = orjson.loads(anthropic_message([{"type": "text", "text": "ok"}]))
    raw["usage"]["cache_creation"] = split
    with pytest.raises(UpstreamBadResponse, match="impossible usage"):
        dialect.decode_chat(orjson.dumps(raw), "route")


def test_stream_keeps_the_split_of_message_start_through_cumulative_deltas(dialect: AnthropicDialect) -> None:
    start = message_start(25, cache_read_input_tokens=100, cache_creation_input_tokens=1500,
                          cache_creation=SPLIT)  # type: ignore[arg-type]
    # message_delta repeats cumulative counts, without the split (MessageDeltaUsage has none)
    delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
             "usage": {"input_tokens": 25, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 1500,
                       "output_tokens": 9}}
    translator = dialect.stream_translator("route", include_usage=True)
    chunks = run_stream(translator, [start, *text_block(0, "Hi"), delta, {"type": "message_stop"}])
    u = translator.usage
    assert (u.prompt_tokens, u.cached_tokens, u.cache_write_tokens, u.cache_write_1h_tokens) == (1625, 100, 1500, 1200)
    assert chunks[-1]["usage"]["prompt_tokens"] == 1625 and u.completion_tokens == 9


def test_a_delta_with_some_counts_leaves_the_others_alone() -> None:
    u = Usage()
    update_usage(u, {"input_tokens": 25, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 1500,
                     "cache_creation": SPLIT, "output_tokens": 1})
    update_usage(u, {"output_tokens": 40})
    assert (u.prompt_tokens, u.cached_tokens, u.cache_write_tokens, u.cache_write_1h_tokens) == (1625, 100, 1500, 1200)
    # Only the uncached input: the cache reads and writes stay (they used to be reset to 0, and the
    # prompt with them).
    update_usage(u, {"input_tokens": 30})
    assert (u.prompt_tokens, u.cached_tokens, u.cache_write_tokens, u.cache_write_1h_tokens) == (1630, 100, 1500, 1200)
    # A smaller cumulative write total without a split: the 1-hour part cannot exceed it.
    update_usage(u, {"cache_creation_input_tokens": 1000})
    assert (u.prompt_tokens, u.cache_write_tokens, u.cache_write_1h_tokens) == (1130, 1000, 1000)
