"""The mock's Anthropic face reports prompt-cache writes for requests with `cache_control` marks."""

from __future__ import annotations

from typing import Any

from anthropic.types import Message, RawMessageStartEvent

from gateway.limits.tokens import count_text
from gateway.mock_upstream.answers import anthropic_events, anthropic_message

MODEL = "claude-haiku-4-5"
LONG = "The policy manual, section by section. " * 40
ONE_HOUR = {"type": "ephemeral", "ttl": "1h"}
FIVE_MIN = {"type": "ephemeral"}


def _body(system: Any, messages: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 64, "system": system,
            "messages": messages or [{"role": "user", "content": "What does section 2 say?"}], **extra}


def _total(usage: dict[str, Any]) -> int:
    return usage["input_tokens"] + usage["cache_creation_input_tokens"] + usage["cache_read_input_tokens"]


def test_without_marks_nothing_is_written() -> None:
    plain = anthropic_message(_body(LONG))["usage"]
    assert plain["cache_creation_input_tokens"] == 0 and "cache_creation" not in plain


def test_a_marked_prefix_is_written_and_split_by_lifetime() -> None:
    system = [{"type": "text", "text": LONG, "cache_control": ONE_HOUR}]
    messages = [{"role": "user", "content": [{"type": "text", "text": LONG + " Appendix.", "cache_control": FIVE_MIN},
                                             {"type": "text", "text": "What does section 2 say?"}]}]
    out = anthropic_message(_body(system, messages))
    Message.model_validate(out)  # Anthropic's own types accept it
    usage = out["usage"]
    split = usage["cache_creation"]
    assert split["ephemeral_1h_input_tokens"] == count_text(LONG, MODEL)
    assert split["ephemeral_5m_input_tokens"] == count_text(LONG + LONG + " Appendix.", MODEL) - count_text(LONG, MODEL)
    assert usage["cache_creation_input_tokens"] == sum(split.values())
    assert usage["cache_read_input_tokens"] == 0
    # The prompt is what it is without marks: the writes are carved out of it, not added to it.
    unmarked = [{"role": "user", "content": [{"type": "text", "text": LONG + " Appendix."},
                                             {"type": "text", "text": "What does section 2 say?"}]}]
    plain = anthropic_message(_body([{"type": "text", "text": LONG}], unmarked))["usage"]
    assert _total(usage) == plain["input_tokens"] and usage["input_tokens"] > 0


def test_the_stream_reports_the_same_writes_at_message_start() -> None:
    body = _body([{"type": "text", "text": LONG, "cache_control": FIVE_MIN}])
    events = anthropic_events(body)
    name, start = events[0]
    assert name == "message_start"
    RawMessageStartEvent.model_validate(start)
    usage = anthropic_message(body)["usage"]
    assert {k: v for k, v in start["message"]["usage"].items() if k != "output_tokens"} == {
        k: v for k, v in usage.items() if k != "output_tokens"}
    assert usage["cache_creation"] == {"ephemeral_5m_input_tokens": count_text(LONG, MODEL),
                                       "ephemeral_1h_input_tokens": 0}


def test_a_marked_tool_and_odd_marks_stay_within_the_prompt() -> None:
    tool = {"name": "lookup", "input_schema": {"type": "object", "properties": {}}, "cache_control": ONE_HOUR}
    out = anthropic_message(_body("short", tools=[tool]))
    usage = out["usage"]
    assert usage["cache_creation"]["ephemeral_1h_input_tokens"] > 0
    assert 0 <= usage["cache_creation_input_tokens"] <= _total(usage) and usage["input_tokens"] >= 0
    # A mark on an empty block, or one that is not an object, is harmless.
    for system in ([{"type": "text", "text": "", "cache_control": FIVE_MIN}],
                   [{"type": "text", "text": "x", "cache_control": "yes"}], [None, 5]):
        u = anthropic_message(_body(system))["usage"]
        assert 0 <= u["cache_creation_input_tokens"] <= _total(u) and u["input_tokens"] >= 0
