"""The limits stage reserves every choice at the larger completion field (memory state, in process)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.limits.stage import InsufficientQuota, Limits
from gateway.observability.metrics import Metrics
from gateway.pipeline.context import Call
from gateway.settings import Settings, load_settings
from gateway.store.state.memory import MemoryStateStore

HELLO = [{"role": "user", "content": "hello"}]  # 8 prompt tokens


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "config").mkdir()
    (tmp_path / "policies").mkdir()
    (tmp_path / "config" / "gateway.yaml").write_text(yaml.safe_dump({
        "providers": {"mock": {"kind": "mock"}},
        "routes": {"chat": {"targets": [{"provider": "mock", "model": "mock-1"}]}},
        "paths": {"policies": "../policies"}}))
    (tmp_path / "config" / "pricing.yaml").write_text(yaml.safe_dump({
        "prices": {"mock/mock-1": {"input": "0.15", "output": "0.60"}}}))
    (tmp_path / "policies" / "tenants.yaml").write_text(yaml.safe_dump({"tenants": {
        "t": {"budgets": {"tokens_per_day": 10_000, "usd_per_day": 1}}}}))
    return load_settings(tmp_path / "config" / "gateway.yaml", env={})


def _reserve(settings: Settings, body: dict[str, Any]) -> Any:
    limits = Limits(settings, MemoryStateStore(), Metrics())
    call = Call(request_id="r", method="POST", path="/v1/chat/completions", kind="chat", tenant="t", key_id="k",
                route="chat")
    return asyncio.run(limits.reserve(call, settings.routes["chat"], body))


@pytest.mark.parametrize(("body", "completion"), [
    ({"max_tokens": 10}, 10),
    ({"max_tokens": 10, "n": 7}, 70),
    ({"max_completion_tokens": 1, "max_tokens": 50, "n": 3}, 150),
    ({"max_completion_tokens": 50, "max_tokens": 1}, 50),
    ({"n": 2}, 2 * 4096),  # no field: the default bound, given to the provider, for each choice
])
def test_what_is_reserved(settings: Settings, body: dict[str, Any], completion: int) -> None:
    hold = _reserve(settings, {"messages": HELLO, **body})
    assert hold.completion_tokens == completion and hold.prompt_tokens == 8
    # priced the same way: every choice at the output price ($0.60 per million = 600,000 pico-dollars a token)
    assert hold.usd_picousd == 8 * 150_000 + completion * 600_000


@pytest.mark.parametrize("body", [
    {"max_tokens": 100, "n": 128},  # 12,808 tokens: over the day's 10,000
    {"max_tokens": 2**62, "n": 128},  # absurd: refused as over the limit, never an overflow
    {"max_completion_tokens": 1, "max_tokens": 20_000},
])
def test_what_cannot_fit_is_refused(settings: Settings, body: dict[str, Any]) -> None:
    with pytest.raises(InsufficientQuota):
        _reserve(settings, {"messages": HELLO, **body})


PREDICTED = "def hello():\n    return 'hello, world'\n" * 20


@pytest.mark.parametrize(("body", "completion"), [
    # best_of: a server that takes it generates (and may bill) best_of sequences to return n
    ({"max_tokens": 10, "best_of": 5}, 50),
    ({"max_tokens": 10, "n": 3, "best_of": 2}, 30),
    # prediction: its tokens the model does not use are billed as completion tokens on top
    ({"max_tokens": 10, "prediction": {"type": "content", "content": PREDICTED}}, None),
    ({"max_tokens": 10, "prediction": {"type": "content", "content": [{"type": "text", "text": PREDICTED}]}}, None),
])
def test_what_reaches_the_provider_beyond_n_is_reserved(settings: Settings, body: dict[str, Any],
                                                       completion: int | None) -> None:
    from gateway.limits.tokens import count_text

    hold = _reserve(settings, {"messages": HELLO, **body})
    if completion is None:  # 10 + the prediction's tokens, raised by the estimate margin (10%)
        completion = 10 + math.ceil(count_text(PREDICTED) * 1.10)
        assert completion > 200
    assert hold.completion_tokens == completion
