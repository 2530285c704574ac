"""What a chat body may make the provider generate: its completion fields and its choice count.

A provider bills every choice (`n`) and may read either completion field: OpenAI reads both
`max_tokens` (deprecated) and `max_completion_tokens`, and other servers one or the other. So the
gateway reserves n x the larger of the two, and every cap it applies (a route's `max_tokens`, a
budget's default, what a route's token budget leaves) lowers every field the body sets. One place
owns this so the limits stage, the route policy, the router and the provider dialects agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FIELDS = ("max_completion_tokens", "max_tokens")
MAX_CHOICES = 128  # OpenAI's bound on `n`


def completion_cap(body: Mapping[str, Any]) -> int | None:
    """The larger completion field the body sets (validated positive integers), or None."""
    a = body.get("max_completion_tokens")
    b = body.get("max_tokens")
    if a is None:
        return b
    if b is None or a >= b:
        return a
    return b


def cap_completion(body: dict[str, Any], limit: int) -> None:
    """Every completion field the body sets, lowered to `limit`; a body that sets none gets `max_tokens`."""
    found = False
    for name in FIELDS:
        value = body.get(name)
        if value is not None:
            found = True
            if value > limit:
                body[name] = limit
    if not found:
        body["max_tokens"] = limit


def capped_completion(body: dict[str, Any], limit: int) -> dict[str, Any]:
    """`cap_completion` on a copy, or the body itself when no field is over `limit`."""
    current = completion_cap(body)
    if current is not None and current <= limit:
        return body
    out = dict(body)
    cap_completion(out, limit)
    return out


def choices(body: Mapping[str, Any]) -> int:
    """The choices the provider will generate (a validated `n`, 1 when absent), or, when larger, a
    validated `best_of`: OpenAI-compatible servers that take it (vLLM and the hosts built on it)
    generate that many sequences to return the best n, and those that bill, bill them all."""
    n = body.get("n")
    n = n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
    best_of = body.get("best_of")
    return best_of if isinstance(best_of, int) and not isinstance(best_of, bool) and best_of > n else n


def predicted_text(body: Mapping[str, Any]) -> str:
    """The text of a `prediction` (OpenAI's predicted outputs): its tokens the model does not use are
    billed as completion tokens on top of what it generates, so each choice may be billed up to the
    completion cap plus the prediction."""
    prediction = body.get("prediction")
    content = prediction.get("content") if isinstance(prediction, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""
