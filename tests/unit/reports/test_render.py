"""render(): table, CSV and JSON from CostRows, money as Decimal end to end."""

import csv
import io
import json
from decimal import Decimal

import pytest

from gateway.reports.costs import CostRow, budget_lines, picousd_to_usd, render, totals


def row(group: dict, **kw) -> CostRow:
    base = dict(
        requests=0,
        errors=0,
        prompt_tokens=0,
        completion_tokens=0,
        cached_tokens=0,
        cost_picousd=0,
        cache_saved_tokens=0,
        cache_saved_picousd=0,
    )
    return CostRow(group=group, **{**base, **kw})


ACME = row(
    {"tenant": "acme", "model": "gpt-4o"},
    requests=3,
    errors=1,
    prompt_tokens=1200,
    completion_tokens=300,
    cached_tokens=200,
    cost_picousd=1_234_567_890,  # $0.00123456789
    cache_saved_tokens=50,
    cache_saved_picousd=5_000_000,
)
BIG = row(
    {"tenant": "a-much-longer-tenant-name", "model": None},
    requests=7,
    prompt_tokens=10**9,
    completion_tokens=1,
    cost_picousd=9_007_199_254_740_993_123,  # past 2**63 as a total, past any float's precision
)
EMPTY = row({"tenant": "idle", "model": "m"})


def test_money_properties_are_exact_decimals():
    assert ACME.cost_usd == Decimal("0.001234567890") and isinstance(ACME.cost_usd, Decimal)
    assert ACME.saved_usd == Decimal("0.000005000000")
    assert ACME.cost_per_request_usd == Decimal("0.000411522630")  # 411522630 pico, rounded half up
    assert ACME.cost_per_1k_tokens_usd == Decimal("0.000823045260")
    assert ACME.total_tokens == 1500
    assert BIG.cost_usd == Decimal("9007199.254740993123")
    assert picousd_to_usd(1) == Decimal("0.000000000001")


def test_no_requests_or_no_tokens_give_none_not_a_division_error():
    assert EMPTY.cost_per_request_usd is None and EMPTY.cost_per_1k_tokens_usd is None
    assert EMPTY.cost_usd == 0
    tokens_only = row({}, requests=2, cost_picousd=10)
    assert tokens_only.cost_per_request_usd == Decimal("0.000000000005")
    assert tokens_only.cost_per_1k_tokens_usd is None


def test_totals_sum_every_counter():
    t = totals([ACME, BIG, EMPTY])
    assert t.group == {} and t.requests == 10 and t.errors == 1
    assert t.cost_picousd == 1_234_567_890 + 9_007_199_254_740_993_123
    assert totals([]).requests == 0 and totals([]).cost_per_request_usd is None


def test_table_is_aligned_with_six_decimal_dollars_and_a_totals_line():
    text = render([ACME, BIG, EMPTY], "table")
    lines = text.rstrip("\n").split("\n")
    header, rule, *body, rule2, total = lines
    assert rule == rule2 and set(rule) == {"-"}
    assert len({len(line) for line in lines}) == 1, "every line ends at the same column"
    assert header.split()[:4] == ["tenant", "model", "requests", "errors"]
    assert body[0].startswith("acme ") and body[1].startswith("a-much-longer-tenant-name  (none)")
    # Columns line up: each value's right edge is its header's right edge.
    end = header.index("cost_usd") + len("cost_usd")
    for line, cost in zip([*body, total], ["0.001235", "9007199.254741", "0.000000", "9007199.255976"], strict=True):
        assert line[:end].endswith(cost), (line, cost)
    assert body[2].split()[-4:-1] == ["-", "-", "0"], "no requests: '-' per request and per 1k tokens"
    assert total.startswith("TOTAL ")
    assert total.split()[1:3] == ["10", "1"]


def test_table_with_no_group_columns_labels_its_lines():
    text = render([row({}, requests=1, cost_picousd=10**12)], "table")
    header, _, data, _, total = text.rstrip("\n").split("\n")
    assert header.split()[0] == "scope" and data.split()[0] == "all" and total.split()[0] == "TOTAL"
    assert "1.000000" in data


def test_empty_report_still_has_its_header_and_zero_totals():
    text = render([], "table", group_by=["tenant", "day"])
    header, _, _, total = text.rstrip("\n").split("\n")
    assert header.split()[:3] == ["tenant", "day", "requests"]
    assert total.split()[:3] == ["TOTAL", "0", "0"]
    assert json.loads(render([], "json", group_by=["day"])) == {
        "group_by": ["day"],
        "rows": [],
        "totals": json.loads(render([], "json"))["totals"],
    }
    assert render([], "csv", group_by=["day"]).splitlines()[0].startswith("day,requests,")


def test_csv_parses_back_to_the_exact_values():
    text = render([ACME, BIG, EMPTY], "csv")
    got = list(csv.DictReader(io.StringIO(text)))
    assert len(got) == 3, "header and rows only: no totals line"
    a, b, e = got
    assert (a["tenant"], a["model"]) == ("acme", "gpt-4o") and b["model"] == ""
    assert int(a["cost_picousd"]) == 1_234_567_890 and Decimal(a["cost_usd"]) == Decimal("0.00123456789")
    assert int(b["cost_picousd"]) == 9_007_199_254_740_993_123
    assert Decimal(b["cost_usd"]) * 10**12 == 9_007_199_254_740_993_123
    assert int(a["requests"]) == 3 and int(a["cached_tokens"]) == 200 and int(a["total_tokens"]) == 1500
    assert e["cost_per_request_usd"] == "" and e["cost_per_1k_tokens_usd"] == ""
    assert Decimal(a["saved_usd"]) == Decimal("0.000005")


def _walk(v):
    if isinstance(v, dict):
        for x in v.values():
            yield from _walk(x)
    elif isinstance(v, list):
        for x in v:
            yield from _walk(x)
    else:
        yield v


def test_json_carries_exact_values_and_never_a_float():
    text = render([ACME, BIG, EMPTY], "json")
    doc = json.loads(text)
    assert not any(isinstance(v, float) for v in _walk(doc))
    assert doc["group_by"] == ["tenant", "model"]
    a, b, e = doc["rows"]
    assert a["group"] == {"tenant": "acme", "model": "gpt-4o"} and b["group"]["model"] is None
    assert a["cost_picousd"] == 1_234_567_890 and a["cost_usd"] == "0.001234567890"
    assert b["cost_picousd"] == 9_007_199_254_740_993_123 and b["cost_usd"] == "9007199.254740993123"
    assert a["cost_per_request_usd"] == "0.000411522630"
    assert e["cost_per_request_usd"] is None and e["cost_per_1k_tokens_usd"] is None
    assert doc["totals"]["cost_picousd"] == 1_234_567_890 + 9_007_199_254_740_993_123
    assert doc["totals"]["requests"] == 10
    assert "budgets" not in doc


BUDGETS = {
    "acme": {
        "usd_per_month": Decimal("100"),
        "usd_per_day": None,
        "tokens_per_month": 1_000_000,
        "tokens_per_day": None,
        "spent_usd_month": Decimal("12.3456789"),
        "spent_usd_day": Decimal("1.5"),
        "spent_tokens_month": 1500,
        "spent_tokens_day": 100,
    },
    "beta": {"usd_per_day": Decimal("0"), "spent_usd_day": Decimal("2"), "tokens_per_day": 0.0},
}


def test_budget_lines_compute_percent_and_skip_what_has_no_limit_and_no_spend():
    lines = {(b.tenant, b.budget): b for b in budget_lines(BUDGETS)}
    m = lines[("acme", "usd_per_month")]
    assert (m.used, m.limit, m.percent, m.unit) == (Decimal("12.3456789"), Decimal("100"), Decimal("12.3"), "usd")
    assert lines[("acme", "tokens_per_month")].percent == Decimal("0.2")
    d = lines[("acme", "usd_per_day")]
    assert d.limit is None and d.percent is None and d.used == Decimal("1.5")
    assert lines[("beta", "usd_per_day")].percent is None, "a zero limit: no percent, no division error"
    assert lines[("beta", "tokens_per_day")].used == 0
    assert ("beta", "usd_per_month") not in lines


def test_budgets_in_the_table_json_and_csv():
    table = render([ACME], "table", budgets=BUDGETS)
    assert "Spend against budget" in table
    section = table.split("Spend against budget\n")[1].splitlines()
    assert section[0].split() == ["tenant", "budget", "used", "limit", "percent"]
    assert section[2].split() == ["acme", "usd_per_month", "12.345679", "100.000000", "12.3%"]
    assert ["acme", "usd_per_day", "1.500000", "-", "-"] in [s.split() for s in section]
    assert ["acme", "tokens_per_month", "1500", "1000000", "0.2%"] in [s.split() for s in section]

    doc = json.loads(render([ACME], "json", budgets=BUDGETS))
    assert {
        "tenant": "acme",
        "budget": "usd_per_month",
        "unit": "usd",
        "used": "12.3456789",
        "limit": "100",
        "percent": "12.3",
    } in doc["budgets"]
    assert {"tenant": "acme", "budget": "tokens_per_month", "unit": "tokens", "used": 1500, "limit": 1000000,
            "percent": "0.2"} in doc["budgets"]  # fmt: skip

    (r,) = csv.DictReader(io.StringIO(render([ACME], "csv", budgets=BUDGETS)))
    assert (r["usd_per_month_used"], r["usd_per_month_limit"], r["usd_per_month_percent"]) == (
        "12.3456789",
        "100",
        "12.3",
    )
    assert (r["usd_per_day_used"], r["usd_per_day_limit"], r["usd_per_day_percent"]) == ("1.5", "", "")
    # Rows not grouped by tenant carry no budget columns.
    no_tenant = render([row({"day": "2025-01-01"}, requests=1)], "csv", budgets=BUDGETS)
    assert "usd_per_month_used" not in no_tenant


def test_unknown_format_or_group_is_an_error():
    with pytest.raises(ValueError, match="format"):
        render([], "xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown group"):
        render([], "table", group_by=["colour"])
