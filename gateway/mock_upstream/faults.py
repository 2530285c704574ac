"""Which fault, if any, one request gets.

Random faults come from `FaultConfig` rates drawn from one seeded generator, so a drill with a
seed replays the same sequence. A request can force its own fault by headers (`x-mock-*`) or,
because the gateway does not forward client headers, by a `#mock{...}` directive in the text of
its last user message; a directive wins over headers, and both win over the random draw.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.mock_upstream.core import last_user_text

FaultKind = Literal["status", "hang", "reset", "malformed", "cut", "error_event"]
DIRECTIVE = "#mock"
_HEADER_KEYS = {"x-mock-status": "status", "x-mock-retry-after": "retry_after",
                "x-mock-latency-ms": "latency_ms", "x-mock-fault": "fault",
                "x-mock-chunk-delay-ms": "chunk_delay_ms"}
# What an error says (a status fault's body, a stream's error event) and the model an answer names:
# directive-only, so tests can make the mock say what a hostile or broken provider might.
_TEXT_KEYS = ("message", "param", "code", "model")
# `"json": "pretty"`: the answer's JSON spaced as Jackson's pretty printer spaces it (`"key" : value`,
# one key a line, a stream's chunk over several `data:` lines), as some OpenAI-compatible servers send it.
_DIRECTIVE_KEYS = frozenset((*_HEADER_KEYS.values(), *_TEXT_KEYS, "json"))
_SIMPLE: dict[str, FaultKind] = {"hang": "hang", "reset": "reset", "malformed": "malformed"}
_decoder = json.JSONDecoder()
# Longest wait a request or the config may ask for (ms; a retry-after in s): beyond it, use the hang fault.
_MAX_WAIT = 3_600_000


class FaultConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    error_rate: float = Field(0.0, ge=0, le=1)
    error_statuses: tuple[int, ...] = Field((500,), min_length=1)
    rate_limit_rate: float = Field(0.0, ge=0, le=1)
    retry_after_s: float = Field(1.0, ge=0, le=_MAX_WAIT / 1000)
    latency_ms: float = Field(0.0, ge=0, le=_MAX_WAIT)
    latency_jitter_ms: float = Field(0.0, ge=0, le=_MAX_WAIT)
    hang_rate: float = Field(0.0, ge=0, le=1)
    reset_rate: float = Field(0.0, ge=0, le=1)
    malformed_rate: float = Field(0.0, ge=0, le=1)
    stream_cut_after: int | None = Field(None, ge=0)
    # Pause between stream events, so time-to-first-token differs from total time.
    chunk_delay_ms: float = Field(0.0, ge=0, le=_MAX_WAIT)
    seed: int | None = None

    @field_validator("error_statuses")
    @classmethod
    def _statuses(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(not 400 <= s <= 599 for s in v):
            raise ValueError("error statuses must be between 400 and 599")
        return v

    @model_validator(mode="after")
    def _rates(self) -> FaultConfig:
        # One draw is split into bands, so the rates are exact probabilities and must fit in 1.
        if self.reset_rate + self.hang_rate + self.rate_limit_rate + self.error_rate + self.malformed_rate > 1:
            raise ValueError("the sum of reset, hang, rate-limit, error and malformed rates must not exceed 1")
        return self


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind | None = None
    status: int | None = None
    retry_after_s: float | None = None
    latency_ms: float = 0.0
    cut_after: int | None = None
    chunk_delay_ms: float = 0.0
    source: str | None = None  # random | config | header | directive
    # Set by a directive: the error's message/param/code, and the model name the answer gives.
    message: str | None = None
    param: str | None = None
    code: str | None = None
    model: str | None = None
    pretty: bool = False  # set by a directive: the answer's JSON pretty-printed

    def describe(self) -> dict[str, Any] | None:
        """What the request log shows; None when the request was served untouched."""
        if self.kind is None and not self.latency_ms and not self.chunk_delay_ms and not self.pretty:
            return None
        return {k: v for k, v in asdict(self).items() if v is not None and v != 0.0}


class DirectiveError(ValueError):
    """A malformed `x-mock-*` header or `#mock{...}` directive; answered with a 400."""


def find_directive(body: Mapping[str, Any]) -> dict[str, Any] | None:
    text = last_user_text(body)
    at = text.find(DIRECTIVE + "{")
    if at < 0:
        return None
    try:
        value, _ = _decoder.raw_decode(text, at + len(DIRECTIVE))
    except ValueError as exc:
        raise DirectiveError(f"{DIRECTIVE} directive is not a JSON object: {exc}") from None
    unknown = set(value) - _DIRECTIVE_KEYS
    if unknown:
        raise DirectiveError(f"{DIRECTIVE} directive has unknown keys: {', '.join(sorted(unknown))}")
    return dict(value)


def header_overrides(headers: Mapping[str, str]) -> dict[str, Any]:
    return {key: headers[name] for name, key in _HEADER_KEYS.items() if name in headers}


def _number(key: str, value: Any, *, integer: bool = False) -> float:
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError):
        raise DirectiveError(f"{key} must be a number, got {value!r}") from None
    if number < 0 or number != number:
        raise DirectiveError(f"{key} must not be negative")
    if number > _MAX_WAIT:
        raise DirectiveError(f"{key} must be at most {_MAX_WAIT}")
    return number


def _text(over: Mapping[str, Any], key: str, default: str | None) -> str | None:
    if key not in over:
        return default
    if not isinstance(over[key], str):
        raise DirectiveError(f"{key} must be a string")
    value: str = over[key]
    return value


def _with_texts(fault: Fault, over: Mapping[str, Any]) -> Fault:
    """`fault` saying what the request asked it to say, and how (what it does not mention is kept)."""
    style = _text(over, "json", None)
    if style not in (None, "pretty", "compact"):
        raise DirectiveError(f"json must be pretty or compact, got {style!r}")
    return replace(fault, message=_text(over, "message", fault.message), param=_text(over, "param", fault.param),
                   code=_text(over, "code", fault.code), model=_text(over, "model", fault.model),
                   pretty=fault.pretty if style is None else style == "pretty")


def _forced(over: Mapping[str, Any], source: str, cfg: FaultConfig, base: Fault) -> Fault:
    """The fault a request asked for; what it does not mention is kept from `base`."""
    latency = _number("latency_ms", over["latency_ms"]) if "latency_ms" in over else base.latency_ms
    delay = _number("chunk_delay_ms", over["chunk_delay_ms"]) if "chunk_delay_ms" in over else base.chunk_delay_ms
    retry = _number("retry_after", over["retry_after"]) if "retry_after" in over else None
    timing = _with_texts(Fault(latency_ms=latency, chunk_delay_ms=delay, source=source), over)
    fault = over.get("fault")
    if fault is not None:
        fault = str(fault).strip().lower()
        if fault == "none":
            return timing
        if fault in _SIMPLE:
            return replace(timing, kind=_SIMPLE[fault])
        if fault.startswith("cut:"):
            return replace(timing, kind="cut", cut_after=int(_number("cut", fault[4:], integer=True)))
        if fault.startswith("error:"):
            # A stream that sends N events, then an error event in the provider's shape.
            return replace(timing, kind="error_event", cut_after=int(_number("error", fault[6:], integer=True)))
        raise DirectiveError(f"fault must be hang, reset, malformed, cut:N, error:N or none, got {fault!r}")
    if "status" in over:
        status = int(_number("status", over["status"], integer=True))
        if not 100 <= status <= 599:
            raise DirectiveError(f"status must be an HTTP status, got {status}")
        if status < 400:
            return timing
        if retry is None and status == 429:
            retry = cfg.retry_after_s
        return replace(timing, kind="status", status=status, retry_after_s=retry)
    # Only timing (or retry-after) was given: the random draw's fault, if any, stands.
    if base.kind == "status" and retry is not None:
        base = replace(base, retry_after_s=retry)
    return _with_texts(replace(base, latency_ms=latency, chunk_delay_ms=delay,
                               source=base.source if base.kind else source), over)


class FaultInjector:
    """Draws faults from a config; not thread-safe (one per event loop)."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)

    def draw(self, *, stream: bool) -> Fault:
        """The random part: always the same number of draws per request, so a seed replays exactly."""
        cfg = self.config
        u = self._rng.random()
        latency = cfg.latency_ms + (self._rng.uniform(0, cfg.latency_jitter_ms) if cfg.latency_jitter_ms else 0.0)
        timing = Fault(latency_ms=latency, chunk_delay_ms=cfg.chunk_delay_ms)
        bands: tuple[tuple[Literal["reset", "hang", "rate_limit", "error", "malformed"], float], ...] = (
            ("reset", cfg.reset_rate), ("hang", cfg.hang_rate), ("rate_limit", cfg.rate_limit_rate),
            ("error", cfg.error_rate), ("malformed", cfg.malformed_rate),
        )
        for band, rate in bands:
            if u < rate:
                if band == "rate_limit":
                    return replace(timing, kind="status", status=429, retry_after_s=cfg.retry_after_s,
                                   source="random")
                if band == "error":
                    # Where u falls inside the band picks the status: no extra draw needed.
                    status = cfg.error_statuses[min(int(u / rate * len(cfg.error_statuses)),
                                                    len(cfg.error_statuses) - 1)]
                    return replace(timing, kind="status", status=status, source="random")
                return replace(timing, kind=band, source="random")
            u -= rate
        if stream and cfg.stream_cut_after is not None:
            return replace(timing, kind="cut", cut_after=cfg.stream_cut_after, source="config")
        return timing

    def decide(self, headers: Mapping[str, str], body: Mapping[str, Any] | None, *, stream: bool) -> Fault:
        """The fault for one request. Raises DirectiveError for a malformed override."""
        fault = self.draw(stream=stream)
        over = header_overrides(headers)
        if over:
            fault = _forced(over, "header", self.config, fault)
        directive = find_directive(body) if body is not None else None
        if directive:
            fault = _forced(directive, "directive", self.config, fault)
        if fault.kind in ("cut", "error_event") and not stream:
            # Only a stream can be cut between events; a plain answer is served whole.
            return Fault(latency_ms=fault.latency_ms, source=fault.source, model=fault.model, pretty=fault.pretty)
        return fault
