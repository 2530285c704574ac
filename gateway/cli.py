"""The `gateway` command: one sub-command per verb of the contract."""

from __future__ import annotations

import asyncio
import importlib
import ipaddress
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from functools import wraps
from typing import Any, TypeVar

import click

from gateway.netsock import listening_socket
from gateway.settings import ConfigError, Settings, check_workers, config_path_from, load_settings

T = TypeVar("T")

config_option = click.option(
    "--config", "config_path", metavar="PATH", default=None,
    help="Config file (default: $GATEWAY_CONFIG, else config/gateway.yaml).",
)


def _settings(config_path: str | None) -> Settings:
    try:
        return load_settings(config_path_from(config_path))
    except ConfigError as e:
        click.echo(f"gateway: config error: {e}", err=True)
        sys.exit(2)


def _run(coro_fn: Callable[..., Awaitable[T]]) -> Callable[..., T]:
    @wraps(coro_fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        from gateway.store.ledger import LedgerUnavailable

        try:
            return asyncio.run(coro_fn(*args, **kwargs))  # type: ignore[arg-type]
        except LedgerUnavailable as e:
            click.echo(f"gateway: the ledger is unreachable: {e}", err=True)
            sys.exit(3)

    return wrapper


class _Commands(click.Group):
    """Sub-commands that bring their own server load only when invoked: `gateway serve` would
    otherwise carry the mock upstream's modules (~0.7 MB per worker)."""

    lazy = {"mock-upstream": ("gateway.mock_upstream.command", "mock_upstream_command")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module, attr = self.lazy[cmd_name]
            command: click.Command = getattr(importlib.import_module(module), attr)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="gateway")
def cli() -> None:
    """An LLM gateway: OpenAI-compatible, with budgets, failover, caching and cost reports."""


# -- serve ---------------------------------------------------------------------------------------
def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _prepare_ledger(settings: Settings, host: str) -> str | None:
    """Migrate the ledger; on a loopback first run with no key at all, make one for `demo`."""
    from gateway.store.keys import KeyStore
    from gateway.store.ledger import Ledger

    ledger = Ledger.from_url(settings.ledger_url())
    try:
        await ledger.migrate_isolated(settings.ledger_url())
        keys = KeyStore(ledger)
        if settings.env_keys or not _is_loopback(host) or "demo" not in settings.tenants:
            return None
        if await keys.count_active() > 0:
            return None
        _, secret = await keys.create("demo", "first-run", actor="serve")
        return secret
    finally:
        await ledger.aclose()


def _bind(host: str, port: int) -> socket.socket:
    try:
        return listening_socket(host, port)
    except OSError as e:
        click.echo(f"gateway: cannot listen on {host}:{port}: {e.strerror}", err=True)
        sys.exit(2)


@cli.command()
@config_option
@click.option("--host", default=None, help="Interface to listen on (default: server.host).")
@click.option("--port", type=int, default=None, help="Port (default: server.port; 0 picks a free one).")
@click.option("--workers", type=int, default=None, help="Worker processes (default: server.workers).")
def serve(config_path: str | None, host: str | None, port: int | None, workers: int | None) -> None:
    """Run the gateway."""
    import uvicorn

    from gateway.app import create_app
    from gateway.http.server_protocol import http_protocol

    settings = _settings(config_path)
    host = host or settings.server.host
    port = settings.server.port if port is None else port
    workers = workers or settings.server.workers
    try:
        check_workers(settings, workers, flag=workers != settings.server.workers)
    except ConfigError as e:
        click.echo(f"gateway: config error: {e}", err=True)
        sys.exit(2)
    first_key = _run(_prepare_ledger)(settings, host)
    sock = _bind(host, port)
    url = f"http://{host if ':' not in host else f'[{host}]'}:{sock.getsockname()[1]}"

    def announce() -> None:
        click.echo(f"gateway listening on {url}")
        if first_key:
            click.echo(
                "gateway: no tenant key existed, so one was made for tenant 'demo'. It is shown once and "
                f"stored only as a hash:\n\n    {first_key}\n\n"
                f"  try: curl {url}/v1/chat/completions -H 'authorization: Bearer {first_key}' "
                "-H 'content-type: application/json' -d '{\"model\":\"demo\",\"messages\":[{\"role\":\"user\","
                "\"content\":\"hello\"}]}'"
            )
        sys.stdout.flush()

    common: dict[str, Any] = dict(log_config=None, access_log=False, lifespan="on", loop="uvloop",
                                  http=http_protocol(), timeout_graceful_shutdown=10, server_header=False,
                                  # Nothing reads the client address; uvicorn's X-Forwarded-* layer would wrap
                                  # every request for it.
                                  proxy_headers=False, ws="none",
                                  timeout_keep_alive=settings.server.keep_alive_s)
    if workers == 1:
        class AnnouncingServer(uvicorn.Server):
            async def startup(self, sockets: list[socket.socket] | None = None) -> None:
                await super().startup(sockets=sockets)
                if self.started:
                    announce()

        single = AnnouncingServer(uvicorn.Config(create_app(settings), **common))
        single.run(sockets=[sock])
        if not single.started:
            sys.exit(3)
        return

    from uvicorn.supervisors import Multiprocess

    os.environ["GATEWAY_CONFIG"] = str(settings.config_path.resolve())
    config = uvicorn.Config("gateway.app:app_from_env", factory=True, workers=workers, **common)
    announce()
    Multiprocess(config, sockets=[sock]).run()


# -- keys ----------------------------------------------------------------------------------------
@cli.group()
def keys() -> None:
    """Create, list and revoke tenant API keys (stored hashed in the ledger)."""


async def _with_keystore(settings: Settings, fn: Callable[[Any], Awaitable[T]]) -> T:
    from gateway.store.keys import KeyStore
    from gateway.store.ledger import Ledger

    ledger = Ledger.from_url(settings.ledger_url())
    try:
        await ledger.migrate_isolated(settings.ledger_url())
        return await fn(KeyStore(ledger))
    finally:
        await ledger.aclose()


@keys.command("create")
@config_option
@click.option("--tenant", required=True, help="Tenant the key belongs to (declared in policies).")
@click.option("--name", default=None, help="A label for the key.")
def keys_create(config_path: str | None, tenant: str, name: str | None) -> None:
    """Create a key and print it once."""
    settings = _settings(config_path)
    if tenant not in settings.tenants:
        known = ", ".join(sorted(settings.tenants)) or "none"
        click.echo(f"gateway: unknown tenant '{tenant}' (declared: {known})", err=True)
        sys.exit(2)
    record, secret = _run(_with_keystore)(settings, lambda ks: ks.create(tenant, name, actor="cli"))
    click.echo(f"id:     {record.id}\ntenant: {record.tenant}\nkey:    {secret}")
    click.echo("The key is shown once and stored only as a hash.", err=True)


@keys.command("list")
@config_option
@click.option("--tenant", default=None)
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
def keys_list(config_path: str | None, tenant: str | None, include_revoked: bool) -> None:
    """List keys (never the keys themselves: id, tenant, name, prefix, dates)."""
    settings = _settings(config_path)
    records = _run(_with_keystore)(settings, lambda ks: ks.list(tenant=tenant, include_revoked=include_revoked))
    rows = [("ID", "TENANT", "NAME", "PREFIX", "CREATED", "REVOKED")]
    rows += [(r.id, r.tenant, r.name or "", r.prefix, _date(r.created_at), _date(r.revoked_at)) for r in records]
    rows += [(k.source, k.tenant, "(environment)", "", "", "") for k in settings.env_keys
             if tenant in (None, k.tenant)]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _date(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if hasattr(value, "strftime") else (value or "")


@keys.command("revoke")
@config_option
@click.argument("key_id")
def keys_revoke(config_path: str | None, key_id: str) -> None:
    """Revoke a key by id; running gateways stop accepting it within storage.auth_refresh_s."""
    settings = _settings(config_path)
    started = datetime.now(UTC)
    record = _run(_with_keystore)(settings, lambda ks: ks.revoke(key_id, actor="cli"))
    if record is None:
        click.echo(f"gateway: no key with id '{key_id}'", err=True)
        sys.exit(1)
    if record.revoked_at is not None and record.revoked_at < started:
        click.echo(f"{record.id} (tenant {record.tenant}) was already revoked at {_date(record.revoked_at)}")
    else:
        click.echo(f"revoked {record.id} (tenant {record.tenant})")


# -- report --------------------------------------------------------------------------------------
@cli.group()
def report() -> None:
    """Reports from the ledger."""


def _day(_ctx: click.Context, _param: click.Parameter, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a date like 2026-11-30") from None


@report.command("costs")
@config_option
@click.option("--tenant", default=None, help="Only this tenant.")
@click.option("--since", default=None, callback=_day, help="First day (UTC, inclusive), e.g. 2026-11-01.")
@click.option("--until", default=None, callback=_day, help="Last day (UTC, inclusive).")
@click.option("--group-by", default="tenant", show_default=True,
              help="Comma list of: tenant, day, model, route, feature, template.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
def report_costs(config_path: str | None, tenant: str | None, since: date | None, until: date | None,
                 group_by: str, fmt: str) -> None:
    """Cost per tenant, day, model, route, feature and template version; spend against budget."""
    from gateway.reports.budgets import report_text

    settings = _settings(config_path)
    groups = [g.strip() for g in group_by.split(",") if g.strip()]
    try:
        text = _run(_with_ledger)(settings, lambda ledger: report_text(
            ledger, settings, tenant=tenant, since=since, until=until, group_by=groups, fmt=fmt))
    except ValueError as e:
        click.echo(f"gateway: {e}", err=True)
        sys.exit(2)
    click.echo(text, nl=not text.endswith("\n"))


async def _with_ledger(settings: Settings, fn: Callable[[Any], Awaitable[T]]) -> T:
    from gateway.store.ledger import Ledger

    ledger = Ledger.from_url(settings.ledger_url())
    try:
        await ledger.migrate_isolated(settings.ledger_url())
        return await fn(ledger)
    finally:
        await ledger.aclose()


def main() -> None:
    cli(prog_name="gateway")
