"""The log pipeline: access lines and records as JSON lines, written by its thread to text or binary streams."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from gateway.observability.logging import ACCESS_LOGGER, LogPipeline, _access_line, _timestamp


def test_timestamps_are_utc_with_milliseconds_across_seconds() -> None:
    assert _timestamp(1764460800.0) == "2025-11-30T00:00:00.000Z"
    assert _timestamp(1764460800.9996) == "2025-11-30T00:00:00.999Z"
    assert _timestamp(1764460801.25) == "2025-11-30T00:00:01.250Z"
    assert _timestamp(1764460800.5) == "2025-11-30T00:00:00.500Z"  # an earlier second again


def test_an_access_line_leads_with_the_fixed_keys_then_the_fields_in_order() -> None:
    line = _access_line(1764460800.123, {"request_id": "req_1", "status": 200, "cost": None, "odd": {1, 2}.__class__})
    parsed = orjson.loads(line)
    assert list(parsed) == ["ts", "level", "logger", "msg", "request_id", "status", "cost", "odd"]
    assert parsed["ts"] == "2025-11-30T00:00:00.123Z" and parsed["logger"] == ACCESS_LOGGER
    assert parsed["odd"] == "<class 'set'>"  # anything else is written as its str()
    assert orjson.loads(_access_line(1764460800.0, {})) == {
        "ts": "2025-11-30T00:00:00.000Z", "level": "info", "logger": ACCESS_LOGGER, "msg": "request"}


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


@pytest.mark.parametrize("binary", [True, False])
def test_the_writer_writes_every_line_to_a_text_or_binary_stream(binary: bool, restore_root: None) -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8") if binary else io.StringIO()
    pipeline = LogPipeline("info", stream=stream)
    pipeline.install()
    try:
        for i in range(150):  # more than one batch
            pipeline.access({"request_id": f"req_{i}", "tenant": "é"})
        logging.getLogger("gateway.test").warning("careful", extra={"fields": {"n": 1}})
    finally:
        pipeline.stop()
    text = raw.getvalue().decode() if binary else stream.getvalue()  # type: ignore[attr-defined]
    lines = [orjson.loads(line) for line in text.splitlines()]
    access = [line for line in lines if line["logger"] == ACCESS_LOGGER]
    assert [line["request_id"] for line in access] == [f"req_{i}" for i in range(150)]
    assert access[0]["tenant"] == "é"
    other = [line for line in lines if line["logger"] == "gateway.test"]
    assert other == [{"ts": other[0]["ts"], "level": "warning", "logger": "gateway.test", "msg": "careful", "n": 1}]


def test_a_line_over_the_bound_is_written_again_with_every_string_bounded() -> None:
    from gateway.observability.logging import MAX_LINE_BYTES

    small = _access_line(0.0, {"model": "m" * 100, "status": 200})
    assert b"m" * 100 in small  # under the bound: untouched
    line = _access_line(0.0, {"model": "m" * 1_000_000, "error": {"type": "X", "code": "c" * 50_000},
                              "attempts": [{"provider": "p" * 40_000}]})
    assert len(line) < MAX_LINE_BYTES
    record = orjson.loads(line)
    assert record["model"].endswith("...[truncated]") and record["error"]["type"] == "X"
    assert record["attempts"][0]["provider"].startswith("ppp")
