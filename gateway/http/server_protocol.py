"""Which HTTP protocol uvicorn serves the gateway with, and what the gateway's protocol and app share.

The gateway's own protocol (`uvicorn_protocol.py`: response heads joined to their bodies and checked
in one pass, and the request read limits) subclasses uvicorn's private classes and copies its
parser callbacks, so it is only as good as the uvicorn it was written against. `pyproject.toml`
pins uvicorn to that range (TESTED_UVICORN); a uvicorn outside it (installed by hand, or by a
resolver told to ignore the pin) gets uvicorn's own httptools protocol, chosen through uvicorn's
public `http="httptools"`, and one warning line at start-up: slower, and without the connection's
read limits (the ingress still bounds a body's size), but never a private class that moved. The
gateway's module is imported only inside the range, so one that moved cannot break the import.

The names here (the limits, and the scope keys the ingress reads) stay importable whatever uvicorn is.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import uvicorn

# The uvicorn releases the gateway's protocol was tested on: from the first up to, not including,
# the second (major, minor). pyproject.toml says the same (a test holds them together).
TESTED_UVICORN = ((0, 54), (0, 55))
_RELEASE = re.compile(r"(\d+)\.(\d+)(?:\.\d+)?")
_log = logging.getLogger("gateway.server")


def uvicorn_tested(version: str) -> bool:
    """Whether uvicorn `version` is a release in TESTED_UVICORN (a pre-release or a local build is not)."""
    m = _RELEASE.fullmatch(version)
    if m is None:
        return False
    low, high = TESTED_UVICORN
    return low <= (int(m[1]), int(m[2])) < high


def http_protocol(version: str = uvicorn.__version__) -> type[asyncio.Protocol] | Literal["httptools"]:
    """uvicorn's `http=` for this uvicorn: the gateway's protocol, or uvicorn's own outside the tested range."""
    if uvicorn_tested(version):
        from gateway.http.uvicorn_protocol import GatewayHttpToolsProtocol

        return GatewayHttpToolsProtocol
    (low_major, low_minor), (high_major, high_minor) = TESTED_UVICORN
    _log.warning(
        "uvicorn %s is outside the range the gateway's HTTP protocol was tested on (>=%d.%d,<%d.%d): serving "
        "with uvicorn's own, without joined response heads and without the connection read limits (head and "
        "body timeouts, head size, header count, pipelining)", version, low_major, low_minor, high_major,
        high_minor)
    return "httptools"


def _uncounted(reason: str) -> None:
    pass


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What reading one request may cost (the `server:` settings of the same names)."""

    max_head_bytes: int = 32_768
    max_headers: int = 100
    head_timeout_s: float = 10.0
    body_timeout_s: float = 20.0
    min_body_rate_bytes_s: int = 1024
    max_body_bytes: int = 1_048_576
    # How long an answer may wait for its client to read it (the transport's buffer full) before the
    # connection is dropped: a client that never reads would otherwise hold its slot, its upstream
    # connection and its reservation for as long as it likes.
    send_timeout_s: float = 30.0
    # Counts a refusal by reason: head_timeout, body_timeout, head_too_large, too_many_headers, body_too_large,
    # trailers_too_large, too_many_pipelined, send_timeout.
    refused: Callable[[str], None] = _uncounted


# The app (the ingress) offers its limits under this attribute; another app gets the defaults.
LIMITS_ATTRIBUTE = "connection_limits"
# Set in a request's scope to the status the protocol answered it with while its body was read.
READ_REFUSED = "gateway.read_refused"
# Where the ingress keeps a request's Call in its scope (its request id is the answer's too).
CALL_KEY = "gateway.call"
