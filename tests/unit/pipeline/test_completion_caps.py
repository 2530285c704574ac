"""A route's max_tokens and its per-request token budget lower every completion field, for every choice."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import TokenBudgetExceeded
from gateway.pipeline.policy import apply_route_caps
from gateway.pipeline.router import _TokenBudget
from gateway.settings import RouteSettings

ROUTE = {"targets": [{"provider": "p", "model": "m"}]}


def test_a_route_cap_holds_for_both_fields() -> None:
    route = RouteSettings.model_validate({**ROUTE, "max_tokens": 10})
    body: dict[str, Any] = {"max_completion_tokens": 1, "max_tokens": 5000}
    apply_route_caps(body, route)
    assert body == {"max_completion_tokens": 1, "max_tokens": 10}
    body = {}
    apply_route_caps(body, route)
    assert body == {"max_tokens": 10}


def test_the_token_budget_is_shared_by_the_choices() -> None:
    budget = _TokenBudget(total=1000, prompt=100, choices=9)
    out = budget.attempt_body({"max_tokens": 5000, "max_completion_tokens": 4000, "n": 9}, 0)
    assert out["max_tokens"] == out["max_completion_tokens"] == 100  # 9 x 100 = 900 fits, 9 x 101 does not
    small = {"max_completion_tokens": 50, "n": 9}
    assert budget.attempt_body(small, 0) is small
    with pytest.raises(TokenBudgetExceeded):
        _TokenBudget(total=100, prompt=90, choices=11).attempt_body({}, 0)
