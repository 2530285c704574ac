"""`gateway mock-upstream`: run the fault-injecting mock provider as a real HTTP server."""

from __future__ import annotations

import signal
import socket
import sys
from types import FrameType
from typing import Any

import click
import uvicorn
from pydantic import ValidationError

from gateway.limits.tokens import preload
from gateway.mock_upstream.control import MockState
from gateway.mock_upstream.faults import FaultConfig
from gateway.mock_upstream.server import create_mock_app
from gateway.netsock import listening_socket

READY_LINE = "mock-upstream listening on {url}"


class _Server(uvicorn.Server):
    """Announces readiness only once uvicorn really accepts connections."""

    def __init__(self, config: uvicorn.Config, url: str, state: MockState) -> None:
        super().__init__(config)
        self.url = url
        self.state = state

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            click.echo(READY_LINE.format(url=self.url))
            sys.stdout.flush()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.state.closing.set()  # hung requests reset their connections instead of holding us up
        await super().shutdown(sockets=sockets)


def _bind(host: str, port: int) -> socket.socket:
    try:
        return listening_socket(host, port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _statuses(values: tuple[str, ...]) -> list[int]:
    try:
        return [int(v) for value in values for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter("must be HTTP status codes, e.g. 500,503", param_hint="--error-status") from None


def _exit_cleanly(sig: int, frame: FrameType | None) -> None:
    # uvicorn re-raises the signal it caught once it has shut down; ending here makes that exit 0.
    raise SystemExit(0)


@click.command(help="Run a deterministic, fault-injecting mock of the OpenAI, Azure OpenAI and Anthropic APIs.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=9090, show_default=True, help="0 picks a free port.")
@click.option("--error-rate", type=float, default=0.0, show_default=True,
              help="Share of requests answered with an error.")
@click.option("--error-status", multiple=True, help="Error statuses to pick from (repeatable or comma list) [500].")
@click.option("--rate-limit-rate", type=float, default=0.0, show_default=True, help="Share answered with 429.")
@click.option("--retry-after", type=float, default=1.0, show_default=True, help="Seconds sent in retry-after on 429.")
@click.option("--latency-ms", type=float, default=0.0, show_default=True, help="Delay before every answer.")
@click.option("--latency-jitter-ms", type=float, default=0.0, show_default=True, help="Uniform extra delay.")
@click.option("--hang-rate", type=float, default=0.0, show_default=True, help="Share that never answers.")
@click.option("--reset-rate", type=float, default=0.0, show_default=True, help="Share whose connection is reset.")
@click.option("--malformed-rate", type=float, default=0.0, show_default=True, help="Share answered with broken JSON.")
@click.option("--stream-cut-after", type=int, default=None, help="Drop every stream after N events.")
@click.option("--chunk-delay-ms", type=float, default=0.0, show_default=True, help="Pause between stream events.")
@click.option("--seed", type=int, default=None, help="Seed for a reproducible fault sequence.")
@click.option("--api-key", envvar="MOCK_UPSTREAM_API_KEY", default=None,
              help="Require this key (default: $MOCK_UPSTREAM_API_KEY; unset accepts any key).")
@click.option("--dims", type=click.IntRange(1, 4096), default=64, show_default=True, help="Embedding dimensions.")
def mock_upstream_command(host: str, port: int, error_status: tuple[str, ...], retry_after: float,
                          api_key: str | None, dims: int, **rates: Any) -> None:
    try:
        faults = FaultConfig(error_statuses=tuple(_statuses(error_status) or [500]), retry_after_s=retry_after,
                             **rates)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'faults'}: {e['msg']}" for e in exc.errors())
        raise click.UsageError(problems) from None
    preload()  # tiktoken's tables load in ~0.5 s: pay it before announcing readiness, not on request one
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    url = f"http://[{host}]:{bound}" if ":" in host else f"http://{host}:{bound}"
    app = create_mock_app(faults, dims=dims, api_key=api_key or None)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            # Longer than common client pools' idle timeouts, so a load test never
                            # reuses a connection the mock is closing.
                            timeout_keep_alive=75, backlog=4096,
                            # Hangs let go at shutdown by themselves; this bounds a slow paced stream.
                            timeout_graceful_shutdown=2)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)
    # run() is serve() on uvicorn's preferred loop (uvloop when installed).
    _Server(config, url, app.state.mock).run(sockets=[sock])
