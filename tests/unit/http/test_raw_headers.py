"""The model endpoints' header view: lazy, case-insensitive, first of repeated headers wins."""

import pytest

from gateway.http.dispatch import RawHeaders

RAW = [(b"host", b"gw"), (b"authorization", b"Bearer sk-1"), (b"x-gateway-feature", b"search"),
       (b"authorization", b"Bearer sk-2"), (b"x-caf\xe9", b"\xe9t\xe9")]


def test_lookup_is_case_insensitive_and_the_first_repeat_wins() -> None:
    headers = RawHeaders(RAW)
    assert headers["Authorization"] == "Bearer sk-1"
    assert headers.get("x-gateway-feature") == "search"
    assert headers.get("x-missing") is None and headers.get("x-missing", "d") == "d"
    with pytest.raises(KeyError):
        headers["x-missing"]


def test_it_is_a_mapping_of_distinct_names_in_latin_1() -> None:
    headers = RawHeaders(RAW)
    assert list(headers) == ["host", "authorization", "x-gateway-feature", "x-café"]
    assert len(headers) == 4 and "host" in headers and "x-other" not in headers
    assert dict(headers)["x-café"] == "été"
