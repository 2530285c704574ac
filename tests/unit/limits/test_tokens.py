from __future__ import annotations

import gzip
import hashlib

import pytest

from gateway.limits import tokens


def test_shipped_encodings_load_offline_and_count_like_tiktoken() -> None:
    enc = tokens.get_encoding("o200k_base")
    assert enc.encode("hello world") == [24912, 2375]
    assert tokens.get_encoding("cl100k_base").encode("hello world") == [15339, 1917]
    assert enc.decode(enc.encode("ünïcode ✓ text")) == "ünïcode ✓ text"
    assert tokens.count_text("<|endoftext|>") > 1  # special-looking text counts as text


def test_model_families() -> None:
    assert tokens.encoding_name_for_model("gpt-4o-mini") == "o200k_base"
    assert tokens.encoding_name_for_model("openai/o3-mini") == "o200k_base"
    assert tokens.encoding_name_for_model("gpt-4-turbo") == "cl100k_base"
    assert tokens.encoding_name_for_model("gpt-3.5-turbo") == "cl100k_base"


def test_message_overhead_matches_openai_accounting() -> None:
    # OpenAI's cookbook: 3 tokens per message, 3 to prime the reply, 1 per name
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hi", "name": "bob"}]
    enc = tokens.get_encoding("o200k_base")
    expected = 3 + sum(3 + len(enc.encode(m["role"])) + len(enc.encode(m["content"])) for m in messages)
    expected += 1 + len(enc.encode("bob"))
    assert tokens.count_messages(messages, "gpt-4o") == expected


def test_a_corrupted_file_is_refused() -> None:
    good = b"aGVsbG8= 0\n"
    sha = hashlib.sha256(good).hexdigest()
    assert tokens.ranks_from_gzip("t", gzip.compress(good), sha) == {b"hello": 0}
    with pytest.raises(tokens.EncodingIntegrityError):
        tokens.ranks_from_gzip("t", gzip.compress(good + b"d29ybGQ= 1\n"), sha)


def test_repeating_texts_are_counted_once_and_count_the_same() -> None:
    enc = tokens.get_encoding("o200k_base")
    system = "You are a terse assistant. " * 40
    user = "What is the capital of France, and why?"
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    exact = 3 + sum(3 + len(enc.encode_ordinary(m["content"])) + len(enc.encode_ordinary(m["role"]))
                    for m in messages)
    tokens._cached_count.cache_clear()
    tokens._encoding_and_roles.cache_clear()
    assert tokens.count_messages(messages, "gpt-4o") == exact
    assert tokens.count_messages(messages, "gpt-4o") == exact
    info = tokens._cached_count.cache_info()
    # Cached: the system text (a miss, then a hit) and both roles (a miss each, then the encoding's
    # memo of role counts); the user turn is never looked up.
    assert info.hits == 1 and info.misses == 3
    assert tokens._encoding_and_roles("gpt-4o")[1] == {"system": 1, "user": 1}


def test_a_text_past_the_cache_limit_is_counted_every_time() -> None:
    tokens._cached_count.cache_clear()
    tokens._encoding_and_roles.cache_clear()
    long_system = "x " * tokens._CACHE_MAX_CHARS
    tokens.count_messages([{"role": "system", "content": long_system}], "gpt-4o")
    assert tokens._cached_count.cache_info().currsize == 1  # only the role



def test_made_up_roles_are_counted_but_not_kept() -> None:
    tokens._encoding_and_roles.cache_clear()
    enc = tokens.get_encoding("o200k_base")
    n = tokens.count_messages([{"role": "wizard-of-oz", "content": "hi"}], "gpt-4o")
    assert n == 3 + 3 + len(enc.encode_ordinary("hi")) + len(enc.encode_ordinary("wizard-of-oz"))
    assert tokens._encoding_and_roles("gpt-4o")[1] == {}
