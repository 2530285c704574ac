"""Error responses in each provider's own shape, so SDKs and the gateway's adapters see what the
real service would send (OpenAI and Azure `{"error": {...}}`, Anthropic `{"type": "error", ...}`)."""

from __future__ import annotations

import math
from typing import Literal

import orjson
from starlette.responses import Response

Api = Literal["openai", "azure", "anthropic"]

# status -> (type, code, message) as OpenAI sends them.
_OPENAI: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Permission denied."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    408: ("timeout", None, "Request timed out."),
    409: ("invalid_request_error", "conflict", "Conflict."),
    413: ("invalid_request_error", "request_too_large", "Request too large."),
    422: ("invalid_request_error", None, "Unprocessable entity."),
    429: ("requests", "rate_limit_exceeded",
          "Rate limit reached for requests per min (RPM). Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The server is overloaded or not ready yet."),
    504: ("timeout", None, "Gateway timeout."),
}

_ANTHROPIC: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of requests has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out"),
    529: ("overloaded_error", "Overloaded"),
}


def mask_key(key: str) -> str:
    """How OpenAI echoes a wrong key: enough to recognise it, not enough to use it."""
    return f"{key[:5]}***{key[-2:]}" if len(key) >= 10 else "***"


def error_body(api: Api, status: int, message: str | None = None, *, param: str | None = None,
               code: str | None = None, request_id: str = "") -> bytes:
    if api == "anthropic":
        kind, default = _ANTHROPIC.get(status) or (
            ("invalid_request_error", "Invalid request.") if status < 500 else ("api_error", "Internal server error")
        )
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": message or default},
                             "request_id": request_id or None})
    kind, default_code, default = _OPENAI.get(status) or (
        ("invalid_request_error", None, "Invalid request.") if status < 500 else ("server_error", None, "Server error.")
    )
    if api == "azure":
        # Azure answers with a string code and no type.
        return orjson.dumps({"error": {"code": code or default_code or str(status), "message": message or default,
                                       "param": param}})
    return orjson.dumps({"error": {"message": message or default, "type": kind, "param": param,
                                   "code": code if code is not None else default_code}})


def retry_headers(retry_after_s: float | None) -> dict[str, str]:
    if retry_after_s is None:
        return {}
    return {"retry-after": str(math.ceil(retry_after_s)), "retry-after-ms": str(round(retry_after_s * 1000))}


def error_response(api: Api, status: int, message: str | None = None, *, param: str | None = None,
                   code: str | None = None, retry_after_s: float | None = None,
                   request_id: str = "") -> Response:
    headers = retry_headers(retry_after_s)
    if request_id:
        headers["request-id" if api == "anthropic" else "x-request-id"] = request_id
    return Response(error_body(api, status, message, param=param, code=code, request_id=request_id),
                    status_code=status, headers=headers, media_type="application/json")


def error_event(api: Api, message: str | None, *, param: str | None = None, code: str | None = None) -> bytes:
    """An error sent mid-stream, after a 200, as each provider sends one."""
    if api == "anthropic":
        data = orjson.dumps({"type": "error", "error": {"type": code or "api_error",
                                                        "message": message or "Internal server error"}})
        return b"event: error\ndata: " + data + b"\n\n"
    data = orjson.dumps({"error": {"message": message or "The server had an error while processing your request.",
                                   "type": "server_error", "param": param, "code": code}})
    return b"data: " + data + b"\n\n"
