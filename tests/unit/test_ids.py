import re
import time

from gateway.ids import random_hex, request_id, sortable_hex


def test_shapes() -> None:
    assert re.fullmatch(r"req_[0-9a-f]{24}", request_id())
    assert re.fullmatch(r"[0-9a-f]{32}", sortable_hex(16))
    assert re.fullmatch(r"[0-9a-f]{24}", random_hex(12))


def test_sortable_ids_lead_with_the_time_and_are_unique() -> None:
    before = time.time_ns() // 1_000_000
    ids = [sortable_hex(16) for _ in range(10_000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    stamps = [int(i[:12], 16) for i in ids]
    assert before <= min(stamps) and max(stamps) <= after
    assert stamps == sorted(stamps)
