"""The billing rules of images, audio and files, and image sizes read from inline headers."""

from __future__ import annotations

import base64
import struct
from typing import Any

import pytest

from gateway.limits.estimate import estimate_prompt
from gateway.limits.media import Media, describe, image_rule, image_size, media_tokens
from gateway.limits.tokens import count_messages


def _data(mime: str, raw: bytes) -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def _png(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\0" * 4


def _jpeg(w: int, h: int, app_bytes: int = 0) -> bytes:
    out = b"\xff\xd8"
    if app_bytes:  # EXIF metadata ahead of the frame header, as cameras write it
        out += b"\xff\xe1" + struct.pack(">H", app_bytes + 2) + b"\x00" * app_bytes
    out += b"\xff\xdb" + struct.pack(">H", 67) + b"\x00" * 65  # a quantization table
    return out + b"\xff\xc2" + struct.pack(">HBHHB", 11, 8, h, w, 1) + b"\x01\x11\x00" + b"\xff\xd9"


def _webp(chunk: bytes, payload: bytes) -> bytes:
    body = b"WEBP" + chunk + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize(("mime", "raw", "size"), [
    ("image/png", _png(1024, 768), (1024, 768)),
    ("image/gif", b"GIF89a" + struct.pack("<HH", 640, 480) + b"\0" * 20, (640, 480)),
    ("image/jpeg", _jpeg(4000, 3000), (4000, 3000)),
    ("image/jpeg", _jpeg(1920, 1080, app_bytes=60_000), (1920, 1080)),  # read past 60 KB of metadata
    ("image/webp", _webp(b"VP8 ", b"\0\0\0\x9d\x01\x2a" + struct.pack("<HH", 800, 600) + b"\0" * 10), (800, 600)),
    ("image/webp", _webp(b"VP8L", b"\x2f" + (799 | 599 << 14).to_bytes(4, "little") + b"\0" * 10), (800, 600)),
    ("image/webp", _webp(b"VP8X", b"\0" * 4 + (2999).to_bytes(3, "little") + (1999).to_bytes(3, "little")),
     (3000, 2000)),
])
def test_sizes_are_read_from_inline_headers(mime: str, raw: bytes, size: tuple[int, int]) -> None:
    assert image_size(_data(mime, raw)) == size


@pytest.mark.parametrize("url", [
    "https://example.com/a.png",  # remote
    _data("image/png", b"\x89PNG\r\n\x1a\n garbage"),
    _data("image/png", _png(0, 10)),
    _data("image/jpeg", b"\xff\xd8" + b"\xff\xe1\xff\xff" * 2),  # truncated
    _data("image/jpeg", b"\xff\xd8" + b"\xff\xfe\x00\x02" * 100),  # more segments than are read
    "data:image/png," + "x" * 40,  # not base64
    "data:image/png;base64,!!!!" + base64.b64encode(_png(1, 1)).decode(),
    # line breaks: a decoder that skips them reads other bytes at every offset
    "data:image/png;base64,\n" + base64.b64encode(_png(1, 1)).decode(),
    "data:image/png;base64,é" + base64.b64encode(_png(1, 1)).decode(),
])
def test_what_cannot_be_read_is_unknown(url: str) -> None:
    assert image_size(url) is None


def test_openai_tile_rule() -> None:
    rule = image_rule("openai", "gpt-4o")
    assert rule.tokens("high", (1024, 1024)) == 765  # OpenAI's examples
    assert rule.tokens("auto", (2048, 4096)) == 1105
    assert rule.tokens("low", (4096, 4096)) == 85
    assert rule.tokens("high", (128, 64)) == 255  # small images are not enlarged
    assert rule.tokens("high", None) == 85 + 8 * 170  # the largest image the rule allows
    assert max(rule.tokens("high", (w, h)) for w in (1, 768, 1536, 2048, 5000) for h in (1, 768, 2048, 9000)) \
        <= rule.tokens("high", None)
    mini = image_rule("openai", "gpt-4o-mini-2024-07-18")  # ~33x the tokens, same dollars
    assert mini.tokens("high", (1024, 1024)) == 2833 + 4 * 5667 and mini.tokens("low", None) == 2833
    assert image_rule("azure-openai", "o1").tokens("high", (1024, 1024)) == 75 + 4 * 150


def test_patch_and_anthropic_rules() -> None:
    mini = image_rule("openai", "gpt-4.1-mini")
    assert mini.tokens("high", (1024, 1024)) == 1659  # 32 x 32 patches x 1.62, rounded up
    assert mini.tokens("low", (1024, 1024)) == 1659  # detail does not lower patches
    assert mini.tokens("high", (1800, 2400)) == mini.tokens("high", None) == 2489  # capped at 1536 patches
    gpt5 = image_rule("openai", "gpt-5.2")  # both rules, the larger wins
    assert gpt5.tokens("high", (1024, 1024)) == max(70 + 4 * 140, 1229)
    claude = image_rule("anthropic", "claude-sonnet-4-5")
    assert claude.tokens("high", (1000, 750)) == 1000
    assert claude.tokens("low", (3000, 2000)) == 1600 and claude.tokens("high", None) == 1600
    assert image_rule("mock", "mock-1") == image_rule("openai", "gpt-4o")


def test_audio_and_files_count_a_bound_from_their_size() -> None:
    audio = describe({"type": "input_audio", "input_audio": {"data": "A" * 4000, "format": "mp3"}})
    wav = describe({"type": "input_audio", "input_audio": {"data": "A" * 4000, "format": "wav"}})
    rule = image_rule("openai", "gpt-4o")
    assert audio is not None and wav is not None
    assert media_tokens([audio], rule) == 30 and media_tokens([wav], rule) == 8  # 3000 bytes
    pdf = describe({"type": "file", "file": {"file_data": _data("application/pdf", b"x" * 3000), "filename": "f.pdf"}})
    assert pdf == Media("file", nbytes=3000, text="f.pdf")
    assert media_tokens([pdf], rule) == 5 + 2 * 3000 + 3 * 1445  # text + a page image per started KB
    by_id = describe({"type": "file", "file": {"file_id": "file-abc"}})
    assert by_id is not None and media_tokens([by_id], rule) == 200_000 + 100 * 1445
    assert describe({"type": "text", "text": "x"}) is None
    # a part of a type not known here (OpenAI takes an undocumented {"image": <base64>}): the largest image
    other = describe({"image": base64.b64encode(_png(4000, 4000)).decode()})
    assert other is not None and media_tokens([other], rule) == 1445


def test_the_estimate_counts_every_part_and_field() -> None:
    text = [{"role": "user", "content": "what is in the picture?"}]
    base = estimate_prompt({"messages": text}, [("openai", "gpt-4o")], 0)
    image: dict[str, Any] = {"type": "image_url", "image_url": {"url": _data("image/png", _png(2048, 2048))}}
    with_image = [{"role": "user", "content": [{"type": "text", "text": "what is in the picture?"}, image]}]
    targets = [("openai", "gpt-4o"), ("openai", "gpt-4o-mini")]
    assert estimate_prompt({"messages": with_image}, targets, 0) == base + 2833 + 4 * 5667  # the dearest target
    assert estimate_prompt({"messages": with_image}, [("anthropic", "claude")], 0.5) == \
        -(-(count_messages(text, "gpt-4") + 1600) * 3 // 2)
    functions = [{"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    for extra in ({"functions": functions}, {"function_call": {"name": "weather"}},
                  {"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": functions[0]}}}):
        assert estimate_prompt({"messages": text, **extra}, [("openai", "gpt-4o")], 0) > base + 3, extra
    # assistant turns: a legacy function call and a refusal are text the provider reads back
    turns = [*text, {"role": "assistant", "content": None, "function_call": {"name": "weather", "arguments": "{}"}},
             {"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot help with that."}]}]
    # a bare string in a list of parts is text too
    assert count_messages([{"role": "user", "content": ["what is in the picture?"]}], "gpt-4o") == \
        count_messages(text, "gpt-4o")
    assert count_messages(turns, "gpt-4o") >= count_messages([*text, {"role": "assistant"}, {"role": "assistant"}],
                                                            "gpt-4o") + 8
