"""Cost reports show prompt-cache writes: their tokens and the part of the cost they took, exactly."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal

from gateway.reports.costs import CostRow, render, totals


def _row(tenant: str, writes: int, writes_1h: int, write_pico: int, cost: int) -> CostRow:
    return CostRow(group={"tenant": tenant}, requests=2, errors=0, prompt_tokens=5000, completion_tokens=10,
                   cached_tokens=0, cost_picousd=cost, cache_saved_tokens=0, cache_saved_picousd=0,
                   cache_write_tokens=writes, cache_write_1h_tokens=writes_1h, cache_write_picousd=write_pico)


ROWS = [_row("acme", 4000, 1000, 4_600_012_000_001, 9_007_199_254_740_993), _row("beta", 0, 0, 0, 7)]


def test_totals_sum_the_write_columns() -> None:
    t = totals(ROWS)
    assert (t.cache_write_tokens, t.cache_write_1h_tokens, t.cache_write_picousd) == (4000, 1000, 4_600_012_000_001)
    assert t.cache_write_usd == Decimal("4.600012000001")


def test_json_and_csv_carry_exact_write_figures() -> None:
    doc = json.loads(render(ROWS, "json"))
    acme = doc["rows"][0]
    assert (acme["cache_write_tokens"], acme["cache_write_1h_tokens"]) == (4000, 1000)
    assert acme["cache_write_picousd"] == 4_600_012_000_001 and acme["cache_write_usd"] == "4.600012000001"
    assert doc["totals"]["cache_write_picousd"] == 4_600_012_000_001
    lines = list(csv.DictReader(io.StringIO(render(ROWS, "csv"))))
    assert lines[0]["cache_write_tokens"] == "4000" and lines[0]["cache_write_usd"] == "4.600012000001"
    assert lines[1]["cache_write_picousd"] == "0"


def test_the_table_shows_write_tokens_and_dollars() -> None:
    header, _, acme, beta, _, total = render(ROWS, "table").rstrip("\n").split("\n")
    cols = header.split()
    assert cols.index("cache_write_tokens") == cols.index("cached_tokens") + 1
    assert cols.index("cache_write_usd") == cols.index("cost_usd") + 1
    for line, tokens, usd in ((acme, "4000", "4.600012"), (beta, "0", "0.000000"), (total, "4000", "4.600012")):
        cells = line.split()
        offset = len(cells) - len(cols)  # the TOTAL line's label column is blank in the header count
        assert cells[cols.index("cache_write_tokens") + offset] == tokens
        assert cells[cols.index("cache_write_usd") + offset] == usd
