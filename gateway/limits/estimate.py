"""Prompt token estimates per target, before the call.

OpenAI-family targets are counted exactly with tiktoken (their own encoding, OpenAI's
per-message overhead, tool definitions, the deprecated `functions`/`function_call` and a
`response_format` schema included). Other providers tokenize differently: their estimate is the
cl100k count raised by a configurable safety margin. Images, audio and files are counted by each
target's own billing rule (`gateway.limits.media`), only for requests that carry them. The estimate is later
reconciled with the usage the provider reports; the gap is a metric.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from gateway.errors import dumps_forwarded
from gateway.limits.media import Media, describe, image_rule, media_tokens
from gateway.limits.tokens import count_messages, count_text, encoding_name_for_model

_EXACT_KINDS = frozenset({"openai", "azure-openai", "mock"})
# OpenAI wraps tool definitions in a preamble of roughly this many tokens.
_TOOLS_OVERHEAD = 12


def _tools_tokens(tools: Any, model: str) -> int:
    if not isinstance(tools, list) or not tools:
        return 0
    return _TOOLS_OVERHEAD + count_text(dumps_forwarded(tools, "tools").decode(), model, repeats=True)


def _definitions_tokens(body: Mapping[str, Any], model: str) -> int:
    """The deprecated `functions` and `function_call`, and a `response_format` (its JSON schema):
    the provider puts them in the prompt as it does tools. Only called when one is present."""
    total = 0
    for key in ("functions", "function_call", "response_format"):
        value = body.get(key)
        if value is None:
            continue
        if key == "functions":
            total += _tools_tokens(value, model)
        else:
            total += count_text(value if isinstance(value, str) else dumps_forwarded(value, key).decode(), model,
                                repeats=True)
    return total


def encoding_for_target(kind: str, model: str) -> str:
    return encoding_name_for_model(model) if kind in _EXACT_KINDS else "cl100k_base"


def encodings_needed(targets: Iterable[tuple[str, str]]) -> set[str]:
    """The tiktoken encodings the estimates for these (kind, model) targets use: each costs
    30-75 MB of memory, so a gateway loads only those its routes can reach."""
    return {encoding_for_target(kind, model) for kind, model in targets}


@lru_cache(maxsize=256)  # targets come from the config
def _estimator(kind: str, model: str) -> tuple[str, str, bool]:
    """(encoding, model counted as, exact) for a target."""
    exact = kind in _EXACT_KINDS
    return encoding_for_target(kind, model), model if exact else "gpt-4", exact


def estimate_prompt(body: Mapping[str, Any], targets: Iterable[tuple[str, str]], margin: float) -> int:
    """The largest prompt estimate over the targets (kind, model) the request may reach."""
    messages = body.get("messages") or ()
    tools = body.get("tools")
    definitions = "functions" in body or "function_call" in body or "response_format" in body
    parts: list[Mapping[str, Any]] = []
    media: Sequence[Media] | None = None
    counted: dict[str, int] = {}
    best = 0
    for kind, model in targets:
        family, ref_model, exact = _estimator(kind, model)
        n = counted.get(family)
        if n is None:
            n = counted[family] = count_messages(messages, ref_model, parts if media is None else None) + (
                _tools_tokens(tools, ref_model) if tools else 0) + (
                _definitions_tokens(body, ref_model) if definitions else 0)
            if media is None:
                # Parts are collected on the first count only, and read (headers decoded) once.
                media = [m for m in map(describe, parts) if m is not None] if parts else ()
        if media:
            n += media_tokens(media, image_rule(kind, model))
        tokens = n if exact else math.ceil(n * (1 + margin))
        if tokens > best:
            best = tokens
    return best


def estimate_embeddings(body: Mapping[str, Any], model: str) -> int:
    inp = body.get("input")
    if isinstance(inp, str):
        return count_text(inp, model)
    if isinstance(inp, list):
        if all(isinstance(x, int) for x in inp):
            return len(inp)
        return sum(count_text(x, model) if isinstance(x, str) else len(x) for x in inp)
    return 0
