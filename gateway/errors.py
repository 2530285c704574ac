"""The public exception tree and its single mapping to OpenAI error bodies.

Every failure a client can see is a `GatewayError`. Its status code and `type`/`code` follow
what OpenAI's API returns for the same situation, so the OpenAI SDK raises its usual class
(`AuthenticationError`, `PermissionDeniedError`, `NotFoundError`, `BadRequestError`,
`RateLimitError`, `InternalServerError`, ...). Messages never contain a secret: upstream error
text goes through `redact()` before it is attached.
"""

from __future__ import annotations

import re
from typing import ClassVar

import orjson

# Things that look like credentials in upstream error text: OpenAI/Anthropic style keys,
# bearer tokens and long opaque tokens.
_SECRETISH = re.compile(
    r"(sk-[A-Za-z0-9_\-*]{6,}|sk-ant-[A-Za-z0-9_\-*]{6,}|gw-[A-Za-z0-9_\-]{6,}"
    r"|Bearer\s+[A-Za-z0-9._\-~+/=]+|[A-Za-z0-9_\-]{40,})"
)


# Longest text kept from a provider for a client, a log line or the ledger (error messages and
# their param/code, the served model's name): a provider's answer must not turn into megabytes there.
UPSTREAM_TEXT_CHARS = 1024
UPSTREAM_FIELD_CHARS = 256


# Longest client-supplied value (a model name, a path, a method) kept in a log line, an envelope or an
# error message that quotes it: a client's megabyte must not become a megabyte there.
CLIENT_VALUE_CHARS = 256


def redact(text: str, *secrets: str | None) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "[redacted]")
    return _SECRETISH.sub("[redacted]", text)


def bounded(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, marked when cut. Slicing only: cheap enough for any path."""
    return text if len(text) <= limit else text[:limit] + "...[truncated]"


def scrub(text: str, *secrets: str | None, limit: int = UPSTREAM_TEXT_CHARS) -> str:
    """What a provider said, fit to be shown or kept: credentials redacted, then bounded. Only twice
    the bound is searched: a credential that starts inside the bound is still whole enough there to
    be recognised, and a megabyte of text costs no more than a kilobyte."""
    return bounded(redact(text[: 2 * limit], *secrets), limit)


def scrub_field(value: object, *secrets: str | None) -> str | None:
    """An upstream error's `param` or `code`, or a served model name: a short string or None."""
    return scrub(value, *secrets, limit=UPSTREAM_FIELD_CHARS) if isinstance(value, str) else None


class GatewayError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.error_code = code if code is not None else self.code
        self.headers = headers or {}

    def body(self) -> bytes:
        return orjson.dumps(
            {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.error_code}}
        )


# 4xx: the client's request is at fault.
class BadRequest(GatewayError):
    status, type = 400, "invalid_request_error"


class InvalidJSON(BadRequest):
    code = "invalid_json"


# orjson reads JSON up to 1024 levels deep but writes at most this many: a body the gateway must
# re-encode (to forward it, or to count its tools) cannot be deeper.
MAX_JSON_DEPTH = 254


class NestingTooDeep(BadRequest):
    """The body parses but cannot be re-encoded for the provider: it nests too deeply."""

    code = "nesting_too_deep"

    def __init__(self, param: str | None = None) -> None:
        super().__init__(f"The request is nested too deeply to be forwarded: JSON objects and arrays may nest "
                         f"at most {MAX_JSON_DEPTH} levels deep.", param=param)


def dumps_forwarded(value: object, param: str | None = None) -> bytes:
    """orjson.dumps of what a client sent (or what the gateway built from it). orjson refuses to
    write past its depth limit, which is lower than its reading limit, and JSON it parsed holds
    nothing else it could refuse: that failure is the client's nesting, a 400, never a 500. The
    check costs nothing until it fails (no walk over the body)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        raise NestingTooDeep(param) from None


class AuthenticationFailed(GatewayError):
    status, type, code = 401, "invalid_request_error", "invalid_api_key"


class PermissionDenied(GatewayError):
    status, type, code = 403, "invalid_request_error", "permission_denied"


class NotFound(GatewayError):
    status, type, code = 404, "invalid_request_error", "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(GatewayError):
    status, type, code = 405, "invalid_request_error", "method_not_allowed"


class RequestTimeout(GatewayError):
    status, type, code = 408, "invalid_request_error", "request_timeout"


class PayloadTooLarge(GatewayError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class HeaderFieldsTooLarge(GatewayError):
    status, type, code = 431, "invalid_request_error", "request_header_fields_too_large"


class RateLimited(GatewayError):
    status, type, code = 429, "rate_limit_exceeded", "rate_limit_exceeded"


# 5xx: the gateway or a provider is at fault.
class UpstreamError(GatewayError):
    """A provider failed; `retryable` tells the router whether another try may succeed."""

    status, type, code = 502, "api_error", "upstream_error"
    retryable: ClassVar[bool] = True


class UpstreamBadResponse(UpstreamError):
    code = "upstream_bad_response"


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class UpstreamAuthFailed(UpstreamError):
    """The provider refused the gateway's own credentials: an operator problem, never the client's."""

    code = "upstream_auth_failed"


class UpstreamTimeout(UpstreamError):
    status, code = 504, "upstream_timeout"


class UpstreamRateLimited(UpstreamError):
    status, type, code = 429, "rate_limit_exceeded", "upstream_rate_limited"


class UpstreamRejected(UpstreamError):
    """The provider judged the request invalid (400/404/422): retrying cannot help."""

    status, type, code = 400, "invalid_request_error", "upstream_rejected"
    retryable = False

    def __init__(self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message, param=param, code=code)
        self.status = status  # type: ignore[misc]  # per instance: 400, 404 or 422 as the provider said


class TokenBudgetExceeded(BadRequest):
    """The prompt alone does not fit in the route's per-request token budget."""

    code = "token_budget_exceeded"


class ConcurrencyLimited(RateLimited):
    """The tenant has as many requests in flight as it may."""

    code = "concurrency_limit_exceeded"


class TokenBudgetExhausted(UpstreamError):
    """Failed attempts spent the request's token budget: another try would not fit."""

    code = "token_budget_exhausted"
    retryable = False


class DeadlineExceeded(UpstreamTimeout):
    code = "deadline_exceeded"
    retryable = False


class ServiceUnavailable(GatewayError):
    status, type, code = 503, "api_error", "service_unavailable"


class NoTargetAvailable(ServiceUnavailable):
    """Every target of the route is shed: breakers open or bulkheads full."""

    code = "no_target_available"


class Overloaded(ServiceUnavailable):
    code = "gateway_overloaded"


class InternalError(GatewayError):
    status, type, code = 500, "api_error", "internal_error"


def scrub_error(exc: GatewayError, *secrets: str | None) -> GatewayError:
    """`exc` with what a provider may have put in it (message, param, code) scrubbed, in place."""
    exc.message = scrub(exc.message, *secrets)
    exc.param = scrub_field(exc.param, *secrets)
    exc.error_code = scrub_field(exc.error_code, *secrets)
    exc.args = (exc.message,)
    return exc


def error_response_parts(exc: GatewayError, request_id: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """The one mapping: exception -> (status, body, headers)."""
    headers = [(b"content-type", b"application/json"), (b"x-request-id", request_id.encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    return exc.status, exc.body(), headers
