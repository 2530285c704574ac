"""Prompt tokens of the parts of a chat request that are not text: images, audio and files.

Providers bill these by rules of their own, not by the tokens of the bytes sent, so the estimate
applies each rule (or, where the rule needs what cannot be known before the call, a stated
conservative bound). The rules, per target:

- OpenAI-family images, by model-name prefix (`IMAGE_RULES`; the first match wins):
  - tiles (gpt-4o, gpt-4.1, gpt-4.5, o1, o3, gpt-5 and any name no prefix matches): `detail: low`
    costs the base; otherwise the image is scaled down to fit 2048x2048, then down so its shortest
    side is at most 768, and each 512px tile costs `tile` more. gpt-4o-mini bills the same
    dollars with ~33x the tokens (2833 base, 5667 per tile).
  - patches (gpt-4.1-mini/nano, gpt-5-mini/nano, o4-mini): one token per 32x32 patch, at most
    the patch cap, times the model's multiplier; `detail` does not lower it. gpt-5 names are
    counted by both rules (later gpt-5 releases bill patches, 1.2x, up to 2500), the larger wins.
  - the size is read from an inline data URL's PNG, JPEG, GIF or WebP header (the header bytes
    only are decoded); when it is unknown (a remote URL, a header that does not parse) the
    largest image the rule allows is assumed: 8 tiles (base + 8 x tile), or the patch cap.
- Anthropic images: width x height / 750 after scaling the long edge down to 1568, at most
  1600 per image (the unknown-size bound).
- Audio (`input_audio`): 10 tokens a second (OpenAI: one per 100 ms of input audio), the
  duration bounded by the size at the format's leanest encoding: 1 token per 100 bytes (mp3 at
  8 kbit/s, and any format not known), 1 per 400 bytes for wav (4-bit ADPCM at 8 kHz).
- Any other part (OpenAI also takes an undocumented `{"image": <base64>}`): the unknown-size image.
- Files (`file`, PDFs: billed as each page's extracted text plus an image of each page): two
  tokens per byte of the decoded file (deflated text holds ~1.25 tokens a byte), plus one
  unknown-size image per started KB, at most 100 pages (OpenAI's page limit); a `file_id` (size
  unknown) counts 100 such pages and 200,000 tokens of text. A PDF built to inflate far beyond
  that (a compression bomb of text) is bounded only by the model's context window.

A hand-written header reader rather than an image library: four formats, a few fixed offsets,
and nothing else parsed (a general library would also parse formats no provider takes, and some
fetch remote URLs).
"""

from __future__ import annotations

import binascii
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

_MAX_TILES = 8  # 768 x 2048 after scaling: 2 x 4 tiles
_ANTHROPIC_LONG_EDGE = 1568
_ANTHROPIC_MAX = 1600
_AUDIO_BYTES_PER_TOKEN = {"wav": 400}
_AUDIO_DEFAULT_BYTES_PER_TOKEN = 100
_PAGE_BYTES = 1024
_FILE_TOKENS_PER_BYTE = 2
_MAX_PAGES = 100
_FILE_ID_TEXT = 200_000
_JPEG_MAX_SEGMENTS = 64


@dataclass(frozen=True, slots=True)
class ImageRule:
    """How one target bills an image: a tile rule, a patch rule, Anthropic's area rule, or the
    larger of a tile and a patch rule."""

    base: int = 0  # tiles: the cost at low detail, and the base at high
    tile: int = 0  # tiles: per 512px tile (0: no tile rule)
    patch_multiplier: float = 0.0  # patches: tokens per 32px patch (0: no patch rule)
    patch_cap: int = 1536
    area: bool = False  # Anthropic

    def tokens(self, detail: str, size: tuple[int, int] | None) -> int:
        if self.area:
            return _area_tokens(size)
        best = 0
        if self.tile:
            best = _tile_tokens(self.base, self.tile, detail, size)
        if self.patch_multiplier:
            patches = self.patch_cap if size is None else min(
                self.patch_cap, -(-size[0] // 32) * -(-size[1] // 32))
            best = max(best, math.ceil(patches * self.patch_multiplier))
        return best

    def unknown_high(self) -> int:
        return self.tokens("high", None)


_TILES_4O = ImageRule(85, 170)
# (model-name prefix, rule); the first prefix that matches wins, so longer names come first.
IMAGE_RULES: tuple[tuple[str, ImageRule], ...] = (
    ("gpt-4o-mini", ImageRule(2833, 5667)),
    ("gpt-4.1-mini", ImageRule(patch_multiplier=1.62)),
    ("gpt-4.1-nano", ImageRule(patch_multiplier=2.46)),
    ("gpt-5-mini", ImageRule(patch_multiplier=1.62)),
    ("gpt-5-nano", ImageRule(patch_multiplier=2.46)),
    ("o4-mini", ImageRule(patch_multiplier=1.72)),
    ("codex-mini", ImageRule(patch_multiplier=1.72)),
    ("gpt-5", ImageRule(70, 140, patch_multiplier=1.2, patch_cap=2500)),
    ("o1", ImageRule(75, 150)),
    ("o3", ImageRule(75, 150)),
)
_ANTHROPIC = ImageRule(area=True)


@lru_cache(maxsize=256)  # targets come from the config
def image_rule(kind: str, model: str) -> ImageRule:
    if kind == "anthropic":
        return _ANTHROPIC
    name = model.lower().rsplit("/", 1)[-1]
    for prefix, rule in IMAGE_RULES:
        if name.startswith(prefix):
            return rule
    return _TILES_4O


def _tile_tokens(base: int, tile: int, detail: str, size: tuple[int, int] | None) -> int:
    if detail == "low":
        return base
    if size is None:
        return base + tile * _MAX_TILES
    w, h = size
    # Scaled down only (a small image is not enlarged); rounding up keeps the count on the safe side.
    if w > 2048 or h > 2048:
        longest = max(w, h)
        w, h = -(-w * 2048 // longest), -(-h * 2048 // longest)
    shortest = min(w, h)
    if shortest > 768:
        w, h = -(-w * 768 // shortest), -(-h * 768 // shortest)
    return base + tile * (-(-w // 512)) * (-(-h // 512))


def _area_tokens(size: tuple[int, int] | None) -> int:
    if size is None:
        return _ANTHROPIC_MAX
    w, h = size
    longest = max(w, h)
    if longest > _ANTHROPIC_LONG_EDGE:
        w, h = -(-w * _ANTHROPIC_LONG_EDGE // longest), -(-h * _ANTHROPIC_LONG_EDGE // longest)
    return min(_ANTHROPIC_MAX, -(-w * h // 750))


@dataclass(slots=True)  # not frozen: a frozen dataclass is slower to make, and one is made per part
class Media:
    """What the estimate needs to know of one non-text part, read once for all targets."""

    kind: str  # image | audio | file
    detail: str = "auto"
    size: tuple[int, int] | None = None  # an image's pixels, when known
    nbytes: int = -1  # audio and files: the decoded size (-1: unknown)
    audio_format: str = ""
    text: str = ""  # text that goes with it (a file's name)


_TEXT_KINDS = frozenset({"text", "refusal"})  # counted as text (or malformed: the provider refuses them)


def describe(part: Mapping[str, Any]) -> Media | None:
    """The Media of a content part; None for a text part. A part of a type not known here counts as
    the largest image the target bills. (`dict`, not `Mapping`: bodies are parsed JSON, and an ABC
    check costs a microsecond a part.)"""
    kind = part.get("type")
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        detail = image.get("detail") if isinstance(image, dict) else None
        return Media("image", detail if isinstance(detail, str) else "auto",
                     image_size(url) if isinstance(url, str) else None)
    if kind == "input_audio":
        audio = part.get("input_audio")
        data = audio.get("data") if isinstance(audio, dict) else None
        fmt = audio.get("format") if isinstance(audio, dict) else None
        return Media("audio", nbytes=len(data) * 3 // 4 if isinstance(data, str) else -1,
                     audio_format=fmt if isinstance(fmt, str) else "")
    if kind == "file":
        file = part.get("file")
        if not isinstance(file, dict):
            return Media("file")
        data = file.get("file_data")
        name = file.get("filename")
        if isinstance(data, str):
            comma = data.find(",", 0, 256) if data.startswith("data:") else -1
            return Media("file", nbytes=(len(data) - comma - 1) * 3 // 4, text=name if isinstance(name, str) else "")
        return Media("file", text=name if isinstance(name, str) else "")
    if kind in _TEXT_KINDS:
        return None
    # Any other part (OpenAI also takes an undocumented {"image": <base64>}): the largest image.
    return Media("image", "high")


def media_tokens(media: Iterable[Media], rule: ImageRule) -> int:
    """Tokens of the described parts at a target billing images by `rule` (text excluded)."""
    total = 0
    for m in media:
        if m.text:
            total += len(m.text.encode())  # a token is at least a byte
        if m.kind == "image":
            total += rule.tokens(m.detail, m.size)
        elif m.kind == "audio":
            per = _AUDIO_BYTES_PER_TOKEN.get(m.audio_format, _AUDIO_DEFAULT_BYTES_PER_TOKEN)
            total += -(-m.nbytes // per) if m.nbytes >= 0 else 0
        elif m.nbytes >= 0:
            pages = min(_MAX_PAGES, 1 + m.nbytes // _PAGE_BYTES)
            total += _FILE_TOKENS_PER_BYTE * m.nbytes + pages * rule.unknown_high()
        else:
            total += _FILE_ID_TEXT + _MAX_PAGES * rule.unknown_high()
    return total


# -- image sizes from inline data, header bytes only ---------------------------------------------

class _Base64Bytes:
    """Byte ranges of base64 text, each decoded on its own: a JPEG's size may sit past a large
    metadata segment, which is skipped without being decoded."""

    __slots__ = ("size", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.size = len(text) * 3 // 4

    def read(self, offset: int, n: int) -> bytes:
        start = offset // 3 * 4
        end = -(-(offset + n) // 3) * 4
        chunk = self.text[start:end]
        if len(chunk) % 4:
            chunk += "=" * (-len(chunk) % 4)
        try:
            # Strict: a character outside the alphabet would shift every byte after it.
            raw = binascii.a2b_base64(chunk, strict_mode=True)
        except (binascii.Error, ValueError):  # ValueError: a non-ASCII character
            return b""
        skip = offset - start // 4 * 3
        return raw[skip:skip + n]


def image_size(url: str) -> tuple[int, int] | None:
    """(width, height) of an inline base64 PNG, JPEG, GIF or WebP; None when not known."""
    if not url.startswith("data:"):
        return None
    comma = url.find(",", 0, 256)
    if comma < 0 or not url[:comma].endswith(";base64"):
        return None
    text = url[comma + 1:]
    if "\n" in text or "\r" in text or " " in text:
        # Decoders that skip line breaks would read other bytes at every offset than these reads:
        # the size is not known (each check is a memchr).
        return None
    data = _Base64Bytes(text)
    head = data.read(0, 30)
    size: tuple[int, int] | None = None
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) >= 24:
        size = struct.unpack(">II", head[16:24])
    elif head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        size = struct.unpack("<HH", head[6:10])
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        size = _webp_size(head)
    elif head[:2] == b"\xff\xd8":
        size = _jpeg_size(data)
    if size is None or size[0] <= 0 or size[1] <= 0:
        return None
    return size


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and head[20:21] == b"\x2f":
        b0, b1, b2, b3 = head[21:25]
        return 1 + (b0 | (b1 & 0x3F) << 8), 1 + (b1 >> 6 | b2 << 2 | (b3 & 0x0F) << 10)
    if chunk == b"VP8X":
        return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
    return None


_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _jpeg_size(data: _Base64Bytes) -> tuple[int, int] | None:
    pos = 2
    for _ in range(_JPEG_MAX_SEGMENTS):
        head = data.read(pos, 9)
        if len(head) < 4 or head[0] != 0xFF:
            return None
        marker = head[1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # no length
            pos += 2
            continue
        if marker in _SOF:
            if len(head) < 9:
                return None
            h, w = struct.unpack(">HH", head[5:9])
            return w, h
        pos += 2 + struct.unpack(">H", head[2:4])[0]
    return None
