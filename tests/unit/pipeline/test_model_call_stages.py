"""The stage list: a stage is one module and one line; a stage a route does not use is not in its plan;
a stage may answer early and see the answer or each chunk; plans are compiled once per route."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.pipeline.model_call import CHAT, EMBEDDINGS, STAGES, ModelCalls
from gateway.pipeline.reserve import Reserve
from gateway.pipeline.upstream import Upstream
from gateway.runtime import Gateway
from tests.unit.pipeline.harness import PROMPT, Harness, settings_at
from tests.unit.pipeline.noop_stage import NoOp
from tests.unit.pipeline.probe import CANNED, STORED, Canned, Disabled, Marker, Stored, Tagger

CHAT_BODY: dict[str, Any] = {"model": "chat", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}


def _with(*extra: type, before: type = Upstream) -> tuple[type, ...]:
    """The declared stages with `extra` put in just before `before`: the one line a new stage adds."""
    at = STAGES.index(before)
    return (*STAGES[:at], *extra, *STAGES[at:])


async def test_a_no_op_stage_is_one_line_in_the_list(tmp_path: Path) -> None:
    NoOp.runs = 0
    async with Harness(settings_at(tmp_path), stages=_with(NoOp)) as h:
        plan = h.gateway.model_calls.plan(CHAT, "chat", h.gateway.settings.routes["chat"])
        assert plan.names == ("auth", "admission", "body", "policy", "limits", "noop", "upstream")
        reply = await h.request(CHAT_BODY)
        assert reply.status == 200 and NoOp.runs == 1
        assert [name for name, _, _ in reply.call.stage_timings()] == list(plan.names)
        embed = await h.request({"model": "emb", "input": "x"}, path="/v1/embeddings")
        assert embed.status == 200 and NoOp.runs == 2  # one pipeline for chat and embeddings


async def test_a_stage_a_route_does_not_use_costs_nothing(tmp_path: Path) -> None:
    Disabled.runs = 0
    async with Harness(settings_at(tmp_path), stages=_with(Disabled)) as h:
        plan = h.gateway.model_calls.plan(CHAT, "chat", h.gateway.settings.routes["chat"])
        assert "disabled" not in plan.names
        assert (await h.request(CHAT_BODY)).status == 200
        assert Disabled.runs == 0


async def test_route_caps_are_built_only_where_a_route_sets_them(tmp_path: Path) -> None:
    settings = settings_at(tmp_path, config={"routes": {
        "chat": {"targets": [{"provider": "a", "model": "m1"}], "max_tokens": 10},
        "solo": {"targets": [{"provider": "a", "model": "m1"}]},
        "emb": {"targets": [{"provider": "a", "model": "e1"}], "max_tokens": 10}}})
    async with Harness(settings) as h:
        calls, routes = h.gateway.model_calls, h.gateway.settings.routes
        assert "route_caps" in calls.plan(CHAT, "chat", routes["chat"]).names
        assert "route_caps" not in calls.plan(CHAT, "solo", routes["solo"]).names
        assert "route_caps" not in calls.plan(EMBEDDINGS, "emb", routes["emb"]).names  # no completion to cap
        reply = await h.request({**CHAT_BODY, "max_tokens": 500})
        assert reply.status == 200
        assert reply.call.prompt_estimate is not None
        assert (await h.counted())["tokens_per_day"] == PROMPT + 7


async def test_plans_are_compiled_once_and_again_when_the_route_changes(tmp_path: Path) -> None:
    async with Harness(settings_at(tmp_path)) as h:
        calls, route = h.gateway.model_calls, h.gateway.settings.routes["chat"]
        plan = calls.plan(CHAT, "chat", route)
        assert calls.plan(CHAT, "chat", route) is plan
        changed = route.model_copy(update={"max_tokens": 5})
        replanned = calls.plan(CHAT, "chat", changed)
        assert replanned is not plan and "route_caps" in replanned.names


async def test_an_early_answer_skips_the_rest_and_releases_the_reservation(tmp_path: Path) -> None:
    async with Harness(settings_at(tmp_path), stages=_with(Marker, Canned, before=Upstream)) as h:
        reply = await h.request({**CHAT_BODY, "user": "canned"})
        assert reply.status == 200
        assert h.providers["a"].calls == 0 and reply.call.answered_by == "canned"
        # The stages before the one that answered see the answer (Marker does); none after it run.
        assert reply.json()["choices"][0]["message"]["content"] == CANNED["choices"][0]["message"]["content"] \
            + " [marked]"
        assert [name for name, _, _ in reply.call.stage_timings()][-1] == "canned"
        assert (await h.counted())["tokens_per_day"] == 0  # no provider billed it
        assert not h.gateway.limits._live
        assert h.gateway.tenant_caps.in_flight == 0


async def test_a_stage_after_the_answering_one_does_not_see_the_answer(tmp_path: Path) -> None:
    async with Harness(settings_at(tmp_path), stages=_with(Canned, Marker, before=Upstream)) as h:
        reply = await h.request({**CHAT_BODY, "user": "canned"})
        assert reply.json()["choices"][0]["message"]["content"] == CANNED["choices"][0]["message"]["content"]


async def test_a_stage_sees_each_chunk_and_releases_what_it_held(tmp_path: Path) -> None:
    async with Harness(settings_at(tmp_path), stages=_with(Marker, before=Reserve)) as h:
        h.providers["a"].script = ["stream"]
        reply = await h.request({**CHAT_BODY, "stream": True})
        events = reply.events()
        contents = [orjson.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1]
                    if orjson.loads(e)["choices"]]
        # w0 held back until the end of the stream; w1 rewritten on its way.
        assert contents == ["W1", "w2", None, "w0"]
        assert events[-1] == b"[DONE]"
        assert h.providers["a"].closed == 1


async def test_what_a_stage_held_back_passes_through_the_stages_before_it(tmp_path: Path) -> None:
    # Tagger runs before Marker, so it sees every chunk Marker sends on, the held one released at the end too.
    async with Harness(settings_at(tmp_path), stages=_with(Tagger, Marker, before=Upstream)) as h:
        h.providers["a"].script = ["stream"]
        reply = await h.request({**CHAT_BODY, "stream": True})
        events = reply.events()
        contents = [orjson.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1]
                    if orjson.loads(e)["choices"]]
        assert contents == ["W1", "t2", None, "t0"]


async def test_a_stage_rewriting_an_answer_leaves_the_answering_stage_s_own_untouched(tmp_path: Path) -> None:
    # A cache hands out what it keeps: a rewrite for one client must not end up in the next one's answer.
    kept = STORED.body
    async with Harness(settings_at(tmp_path), stages=_with(Marker, Stored, before=Upstream)) as h:
        for _ in range(2):
            reply = await h.request(CHAT_BODY)
            assert reply.json()["choices"][0]["message"]["content"] == "from the stage [marked]"
        assert STORED.body == kept


async def test_stages_that_need_the_route_come_after_those_that_find_it(tmp_path: Path) -> None:
    gateway = Gateway.build(settings_at(tmp_path))
    with pytest.raises(ValueError, match="before the route is known"):
        ModelCalls(gateway, (*STAGES, STAGES[0]))
    await gateway.ledger.aclose()
