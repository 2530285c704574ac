"""The completion fields and choice count of a chat body: what is reserved, and how every cap lowers them."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.limits.completion import cap_completion, capped_completion, choices, completion_cap


@pytest.mark.parametrize(("body", "expected"), [
    ({}, None),
    ({"max_tokens": 7}, 7),
    ({"max_completion_tokens": 7}, 7),
    ({"max_completion_tokens": 1, "max_tokens": 5000}, 5000),  # the attack: the larger one is read too
    ({"max_completion_tokens": 5000, "max_tokens": 1}, 5000),
])
def test_the_larger_field_is_the_cap(body: dict[str, Any], expected: int | None) -> None:
    assert completion_cap(body) == expected


@pytest.mark.parametrize(("body", "expected"), [
    ({}, {"max_tokens": 10}),
    ({"max_tokens": 5}, {"max_tokens": 5}),
    ({"max_completion_tokens": 50}, {"max_completion_tokens": 10}),
    ({"max_completion_tokens": 1, "max_tokens": 5000}, {"max_completion_tokens": 1, "max_tokens": 10}),
    ({"max_completion_tokens": 5000, "max_tokens": 5000}, {"max_completion_tokens": 10, "max_tokens": 10}),
])
def test_a_cap_lowers_every_field(body: dict[str, Any], expected: dict[str, Any]) -> None:
    copy = dict(body)
    out = capped_completion(copy, 10)
    assert out == expected and copy == body  # a copy, the body untouched
    cap_completion(body, 10)
    assert body == expected


def test_capped_returns_the_same_body_when_nothing_is_over() -> None:
    body = {"max_tokens": 3, "max_completion_tokens": 4}
    assert capped_completion(body, 4) is body


@pytest.mark.parametrize(("n", "expected"), [(None, 1), (1, 1), (128, 128), (True, 1), (0, 1)])
def test_choices(n: Any, expected: int) -> None:
    assert choices({} if n is None else {"n": n}) == expected
