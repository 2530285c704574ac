"""Offline tiktoken encodings and token counting.

tiktoken normally downloads its BPE files on first use; a gateway must start air-gapped. The
files ship inside the package (gzipped) and are loaded with their SHA-256 checked against the
hash tiktoken itself expects, so a corrupted or substituted file stops start-up loudly.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import threading
from collections.abc import Iterable, Mapping
from functools import cache, lru_cache
from importlib import resources
from typing import Any

import tiktoken

from gateway.malloc import return_free_heap

_ENDOFTEXT = "<|endoftext|>"

# name -> (sha256 of the uncompressed file, pattern, special tokens); values from tiktoken_ext.openai_public.
_ENCODINGS: dict[str, tuple[str, str, dict[str, int]]] = {
    "cl100k_base": (
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501
        {_ENDOFTEXT: 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260,
         "<|endofprompt|>": 100276},
    ),
    "o200k_base": (
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        "|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        {_ENDOFTEXT: 199999, "<|endofprompt|>": 200018},
    ),
}

# Model-name prefixes of the o200k family; everything else OpenAI-like counts with cl100k.
_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o", "mock")

_lock = threading.Lock()


class EncodingIntegrityError(RuntimeError):
    pass


def _load_ranks(name: str, expected_sha256: str) -> dict[bytes, int]:
    blob = resources.files("gateway.limits").joinpath(f"encodings/{name}.tiktoken.gz").read_bytes()
    return ranks_from_gzip(name, blob, expected_sha256)


def ranks_from_gzip(name: str, blob: bytes, expected_sha256: str) -> dict[bytes, int]:
    data = gzip.decompress(blob)
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise EncodingIntegrityError(f"{name}: sha256 {actual} does not match tiktoken's {expected_sha256}")
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@cache
def get_encoding(name: str) -> tiktoken.Encoding:
    """The named encoding, loaded once per process from the shipped, hash-checked file."""
    if name not in _ENCODINGS:
        raise KeyError(f"unknown encoding {name!r}; shipped: {', '.join(_ENCODINGS)}")
    with _lock:
        sha, pattern, special = _ENCODINGS[name]
        encoding = tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=_load_ranks(name, sha),
                                     special_tokens=special)
        # tiktoken keeps this Python copy of the ranks only to pickle the Encoding; its Rust core has
        # its own. Dropping it saves ~25 MB per encoding (pickling is never used here).
        encoding._mergeable_ranks = {}
        return encoding


@lru_cache(maxsize=256)  # model names come from the config
def encoding_name_for_model(model: str) -> str:
    m = model.lower().rsplit("/", 1)[-1]
    return "o200k_base" if m.startswith(_O200K_PREFIXES) else "cl100k_base"


def encoding_for_model(model: str) -> tiktoken.Encoding:
    return get_encoding(encoding_name_for_model(model))


# Texts that repeat from request to request (roles and names, system prompts, tool definitions)
# are counted once: tokenizing costs ~1 us per 10 characters (and more under load, when the
# tables are out of the CPU's caches), a lookup costs a hash. Bounded in entries and in the length
# of a text kept, so no client can make it large (at most ~8 MB); user turns are always counted.
_CACHE_ENTRIES = 512
_CACHE_MAX_CHARS = 16_384
_REPEATING_ROLES = frozenset({"system", "developer"})
_CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


@lru_cache(maxsize=_CACHE_ENTRIES)
def _cached_count(encoding: str, text: str) -> int:
    return len(get_encoding(encoding).encode_ordinary(text))


def _count(enc: tiktoken.Encoding, text: str, repeats: bool) -> int:
    # encode_ordinary counts special-looking text as text, as the provider would bill it.
    if repeats and len(text) <= _CACHE_MAX_CHARS:
        return _cached_count(enc.name, text)
    return len(enc.encode_ordinary(text))


def count_text(text: str, model: str = "gpt-4o", *, repeats: bool = False) -> int:
    """Tokens of `text`; `repeats`: the same text is likely sent again (a tool list), so it is cached."""
    return _count(encoding_for_model(model), text, repeats)


@lru_cache(maxsize=256)  # model names come from the config
def _encoding_and_roles(model: str) -> tuple[tiktoken.Encoding, dict[str, int]]:
    """The model's encoding, and the token counts of the chat roles in it (filled as they are met)."""
    return encoding_for_model(model), {}


def count_messages(messages: Iterable[Mapping[str, Any]], model: str = "gpt-4o",
                   media: list[Mapping[str, Any]] | None = None) -> int:
    """Prompt tokens of a chat request by OpenAI's accounting: 3 per message, 1 per name, 3 to prime.

    Only text is counted here; content parts that are not text (images, audio, files) are
    appended to `media`, when given, for `gateway.limits.media` to count by their providers' rules."""
    enc, roles = _encoding_and_roles(model)
    total = 3
    for msg in messages:
        total += 3
        role = msg.get("role")
        content = msg.get("content")
        if isinstance(content, str):
            total += _count(enc, content, role in _REPEATING_ROLES)
        elif isinstance(content, list):
            repeats = role in _REPEATING_ROLES
            for part in content:
                if not isinstance(part, Mapping):
                    if isinstance(part, str):  # a bare string in a list of parts is text too
                        total += _count(enc, part, repeats)
                    continue
                text = part.get("text")
                if isinstance(text, str):
                    total += _count(enc, text, repeats)
                elif isinstance(part.get("refusal"), str):
                    total += _count(enc, part["refusal"], False)
                elif media is not None:
                    media.append(part)
        if isinstance(role, str):
            n = roles.get(role)
            if n is None:
                n = _count(enc, role, True)
                if role in _CHAT_ROLES:  # a client's made-up roles are counted, not kept
                    roles[role] = n
            total += n
        name = msg.get("name")
        if isinstance(name, str):
            total += 1 + _count(enc, name, True)
        tool_calls = msg.get("tool_calls")
        for call in tool_calls if isinstance(tool_calls, list) else ():
            fn = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(fn, Mapping):
                total += _count_call(enc, fn)
        if role == "assistant":
            fn = msg.get("function_call")  # the deprecated form of one tool call
            if isinstance(fn, Mapping):
                total += _count_call(enc, fn)
    return total


def _count_call(enc: tiktoken.Encoding, fn: Mapping[str, Any]) -> int:
    total = 0
    for field in ("name", "arguments"):
        if isinstance(fn.get(field), str):
            total += _count(enc, fn[field], field == "name")
    return total


def preload(names: Iterable[str] = ("o200k_base", "cl100k_base")) -> None:
    """Load encodings at start-up so no request pays for it (and a bad file stops start-up)."""
    for name in names:
        get_encoding(name)
    # Building an encoding churns through ~60 MB of temporaries; glibc keeps the freed pages
    # mapped unless asked (measured: ~5 MB of resident memory per worker).
    return_free_heap()
