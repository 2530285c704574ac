"""cost_report(): one GROUP BY over the envelopes, exact integer sums on both back ends."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta

import pytest

from gateway.reports.costs import GROUPS, CostRow, cost_report, render
from gateway.store.envelopes import EnvelopeWriter

DAY0 = date(2025, 6, 1)
BIG = 3_002_399_751_580_331  # about $3002 each: several of them sum past 2**53, where floats go wrong


def _envelopes() -> list[dict]:
    out = []
    tenants, models = ["acme", "beta"], [("gpt-4o", "gpt-4o-2024"), ("claude", None), ("cheap", "cheap")]
    routes, features = ["chat", "batch"], ["search", None]
    templates = [("greet", "2"), ("greet", "3"), (None, None)]
    for i in range(48):
        tenant = tenants[i % 2]
        requested, served = models[i % 3]
        tid, tver = templates[i % 3]
        day = DAY0 + timedelta(days=i % 4)
        out.append(
            {
                "request_id": f"r{i}",
                # Late in the UTC day: the day column must say UTC, whatever the local zone.
                "created_at": datetime(day.year, day.month, day.day, 23, 59, 59, tzinfo=UTC) - timedelta(minutes=i),
                "tenant": tenant,
                "route": routes[i % 2 if i < 24 else (i + 1) % 2],
                "feature": features[(i // 2) % 2],
                "template_id": tid,
                "template_version": tver,
                "model_requested": requested,
                "model_served": served,
                "prompt_tokens": 100 + i,
                "completion_tokens": 10 + i,
                "cached_tokens": i % 5,
                "cache_write_tokens": 40 + i if i % 3 == 1 else 0,
                "cache_write_1h_tokens": i if i % 3 == 1 else 0,
                "cost_picousd": BIG + i if i % 7 == 0 else 1_000_003 * (i + 1),
                "cache_write_picousd": BIG // 2 + i if i % 7 == 1 else 0,
                "cache_status": "hit" if i % 6 == 0 else "miss",
                "cache_saved_tokens": 50 if i % 6 == 0 else 0,
                "cache_saved_picousd": 777_777_777 if i % 6 == 0 else 0,
                "status": 502 if i % 11 == 0 else 200,
                "error_type": "stream_error" if i % 13 == 5 else None,
            }
        )
    return out


ENVS = _envelopes()


def _key(e: dict, g: str) -> str | None:
    if g == "day":
        return e["created_at"].date().isoformat()
    if g == "model":
        return e["model_served"] or e["model_requested"]
    if g == "template":
        return None if e["template_id"] is None else f"{e['template_id']}@{e['template_version']}"
    return e[g]


def expected(group_by, envs=ENVS) -> list[CostRow]:
    acc: dict[tuple, dict] = defaultdict(lambda: defaultdict(int))
    for e in envs:
        k = tuple(_key(e, g) for g in group_by)
        a = acc[k]
        a["requests"] += 1
        a["errors"] += int(e["status"] >= 400 or e["error_type"] is not None)
        for f in (
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "cost_picousd",
            "cache_saved_tokens",
            "cache_saved_picousd",
            "cache_write_tokens",
            "cache_write_1h_tokens",
            "cache_write_picousd",
        ):
            a[f] += e[f]
    rows = [CostRow(group=dict(zip(group_by, k, strict=True)), **a) for k, a in acc.items()]
    rows.sort(key=lambda r: tuple((v is None, v or "") for v in r.group.values()))
    return rows


@pytest.fixture
async def filled(ledger, tmp_path):
    w = EnvelopeWriter(ledger, tmp_path / "journal", batch_size=16)
    await w.start()
    for e in ENVS:
        w.submit(e)
    await w.aclose()
    return ledger


@pytest.mark.parametrize("group", GROUPS)
async def test_each_single_grouping_matches_python_sums(filled, group):
    rows = await cost_report(filled, group_by=(group,))
    assert rows == expected((group,))
    assert all(type(getattr(r, f)) is int for r in rows for f in ("cost_picousd", "requests", "prompt_tokens"))


async def test_the_model_and_template_groups_fall_back_and_join(filled):
    models = {r.group["model"] for r in await cost_report(filled, group_by=("model",))}
    assert models == {"gpt-4o-2024", "claude", "cheap"}
    templates = {r.group["template"] for r in await cost_report(filled, group_by=("template",))}
    assert templates == {"greet@2", "greet@3", None}


@pytest.mark.parametrize("group_by", [*list(itertools.combinations(GROUPS, 2)), ("tenant", "day", "model", "route")])
async def test_combinations(filled, group_by):
    assert await cost_report(filled, group_by=group_by) == expected(group_by)


async def test_sums_are_exact_past_float_precision(filled):
    (total,) = await cost_report(filled, group_by=())
    exact = sum(e["cost_picousd"] for e in ENVS)
    assert exact > 2**53 and float(exact) != exact
    assert total.cost_picousd == exact and total.requests == 48
    assert total.group == {}
    assert json.loads(render([total], "json"))["totals"]["cost_picousd"] == exact


async def test_date_range_is_inclusive_and_the_tenant_filter_applies(filled):
    d1, d2 = DAY0 + timedelta(days=1), DAY0 + timedelta(days=2)
    rows = await cost_report(filled, since=d1, until=d2, group_by=("day",))
    assert [r.group["day"] for r in rows] == [d1.isoformat(), d2.isoformat()]
    in_range = [e for e in ENVS if d1 <= e["created_at"].date() <= d2]
    assert rows == expected(("day",), in_range)

    rows = await cost_report(filled, tenant="beta", since=d2, group_by=("tenant", "model"))
    assert rows == expected(
        ("tenant", "model"), [e for e in ENVS if e["tenant"] == "beta" and e["created_at"].date() >= d2]
    )
    assert {r.group["tenant"] for r in rows} == {"beta"}

    assert await cost_report(filled, until=DAY0 - timedelta(days=1)) == []
    assert await cost_report(filled, tenant="nobody", group_by=()) == []
    assert await cost_report(filled, until=DAY0, group_by=()) == expected(
        (), [e for e in ENVS if e["created_at"].date() == DAY0]
    )


async def test_bad_arguments(ledger):
    with pytest.raises(ValueError, match="unknown group"):
        await cost_report(ledger, group_by=("tenant", "colour"))
    with pytest.raises(ValueError, match="after"):
        await cost_report(ledger, since=date(2025, 2, 1), until=date(2025, 1, 1))
    assert await cost_report(ledger) == []
    assert await cost_report(ledger, group_by=("tenant", "tenant")) == []
