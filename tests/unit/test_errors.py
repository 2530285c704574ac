from __future__ import annotations

import orjson

from gateway.errors import (
    AuthenticationFailed,
    ModelNotFound,
    RateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    error_response_parts,
    redact,
)


def test_one_mapping_to_openai_bodies() -> None:
    status, body, headers = error_response_parts(RateLimited("slow", headers={"Retry-After": "2"}), "req_1")
    assert status == 429
    assert orjson.loads(body) == {"error": {"message": "slow", "type": "rate_limit_exceeded", "param": None,
                                            "code": "rate_limit_exceeded"}}
    assert (b"retry-after", b"2") in headers and (b"x-request-id", b"req_1") in headers
    assert error_response_parts(AuthenticationFailed("x"), "r")[0] == 401
    assert orjson.loads(ModelNotFound("m", param="model").body())["error"]["code"] == "model_not_found"
    assert UpstreamTimeout("t").status == 504
    rejected = UpstreamRejected("no", status=422)
    assert rejected.status == 422 and not rejected.retryable


def test_redact_scrubs_keys() -> None:
    text = "Incorrect API key provided: sk-proj-abc123***wxyz. Bearer abc.def and gw-abcdefghijk and my-secret"
    out = redact(text, "my-secret")
    for leaked in ("sk-proj", "abc.def", "gw-abcdefghijk", "my-secret"):
        assert leaked not in out
    assert "Incorrect API key provided" in out


def test_scrub_redacts_then_bounds_and_reads_only_twice_the_bound() -> None:
    from gateway.errors import bounded, scrub, scrub_field

    assert bounded("abc", 3) == "abc" and bounded("abcd", 3) == "abc...[truncated]"
    text = "key sk-abcdefghijkl and Bearer tok.en-1 and plainsecret " + "w " * 5000
    out = scrub(text, "plainsecret", limit=100)
    assert "sk-abc" not in out and "tok.en" not in out and "plainsecret" not in out
    assert out.startswith("key [redacted] and [redacted] and [redacted]") and len(out) <= 100 + 14
    # a credential that starts inside the bound is still recognised, however long the text
    assert "sk-" not in scrub("x " * 49 + "sk-" + "a" * 10_000, limit=100)
    assert scrub_field(5) is None and scrub_field("code") == "code"
