"""Config and policies -> frozen, typed settings.

This module is the only reader of the environment: `${VAR}` references in the YAML files are
resolved here, once, and everything downstream receives plain values. Any mistake (unknown key,
wrong type, missing variable, dangling reference) becomes one `ConfigError` whose message names
the file and the key, so start-up stops with one readable line instead of a traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.limits.pricing import Pricing, exact_decimal

DEFAULT_CONFIG = "config/gateway.yaml"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_M = TypeVar("_M", bound=BaseModel)


class ConfigError(Exception):
    """A configuration mistake; str() is the one line printed at start-up."""

    def __init__(self, file: Path | str, key: str, message: str) -> None:
        self.file, self.key, self.message = str(file), key, message
        where = f"{self.file}: {key}: " if key else f"{self.file}: "
        super().__init__(where + message)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(1_048_576, gt=0)
    workers: int = Field(1, ge=1, le=64)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Log lines wait in a bounded queue; past it they are counted and dropped, never blocking.
    log_queue_size: int = Field(10_000, gt=0)
    # Idle keep-alive connections are closed after this. Longer than the usual load balancer
    # idle timeout (60 s), so the balancer, not the gateway, closes first: a server closing a
    # connection just as a client reuses it is a dropped request.
    keep_alive_s: float = Field(75.0, gt=0)
    # Model calls in flight at once; past it a request gets 503 with retry-after at once.
    max_in_flight: int = Field(1024, gt=0)
    # Admin and operations traffic has its own small pool, so a flood of model calls cannot lock
    # an operator out.
    admin_max_in_flight: int = Field(16, gt=0)
    # What reading a request may cost before any of it is answered (enforced by the HTTP protocol,
    # before auth and before any in-flight slot): a head (request line and headers) must arrive
    # within head_timeout_s of its first byte (a new connection's first head: of the connection's
    # opening), in at most max_head_bytes and max_headers headers, else 408 or 431 and the
    # connection is closed. A body's deadline is body_timeout_s after its head ends, moved one
    # second later for every min_body_rate_bytes_s bytes that arrive: a body slower than that gets
    # 408 and the connection is closed.
    head_timeout_s: float = Field(10.0, gt=0, le=3600)
    max_head_bytes: int = Field(32_768, ge=1024, le=16_777_216)
    max_headers: int = Field(100, ge=1, le=10_000)
    body_timeout_s: float = Field(20.0, gt=0, le=3600)
    min_body_rate_bytes_s: int = Field(1024, gt=0)
    # An answer whose client stops reading it (the connection's send buffer stays full) this long
    # has its connection dropped: it would hold its in-flight slot, its upstream connection and its
    # reservation for as long as the client liked.
    send_timeout_s: float = Field(30.0, gt=0, le=3600)


class StorageSettings(_Model):
    state: str = "memory"
    ledger: str = "sqlite:///.gateway/ledger.db"
    # What of a call's bodies its envelope keeps: none (default: prompts may be sensitive),
    # the request, or the request and the (non-streamed) response.
    envelope_bodies: Literal["none", "request", "all"] = "none"
    # Every envelope is journaled here before the ledger insert, and waits here while the ledger
    # is unreachable (relative to the config file).
    journal_dir: str = "../.gateway/journal"
    # The journal's group commit: at most this long between an answered call and its envelope on
    # disk (fsync'd), so what a crash can lose; one write and one fsync per interval.
    journal_commit_ms: int = Field(20, ge=1, le=1000)
    # How often the in-memory key cache is refreshed from the ledger; a miss refreshes it too,
    # at most once a second, so a new key works at once and a flood of bad keys costs nothing.
    auth_refresh_s: float = Field(5.0, gt=0)

    @field_validator("state")
    @classmethod
    def _state_scheme(cls, v: str) -> str:
        if v != "memory" and not v.startswith(("redis://", "rediss://")):
            raise ValueError("must be 'memory' or a redis:// URL")
        return v

    @field_validator("ledger")
    @classmethod
    def _ledger_scheme(cls, v: str) -> str:
        if not v.startswith(("sqlite://", "postgresql://", "postgres://")):
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        return v


ProviderKind = Literal["openai", "azure-openai", "anthropic", "mock"]


class ProviderSettings(_Model):
    kind: ProviderKind
    base_url: str | None = None
    api_key: str | None = Field(default=None, repr=False)
    api_version: str | None = None
    timeout_s: float = Field(30.0, gt=0)
    connect_timeout_s: float = Field(5.0, gt=0)
    max_connections: int = Field(256, gt=0)
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    # OpenAI-compatible servers that reject `stream_options` can turn this off; usage of
    # their streams is then estimated instead of reported.
    stream_usage: bool = True
    # Anthropic needs max_tokens; this is used when neither the client nor the route sets it.
    default_max_tokens: int = Field(4096, gt=0)
    # Bulkhead: calls in flight to this provider at once; a call finding it full waits at most
    # queue_timeout_ms among at most max_queue waiters, then the target is skipped (failover).
    max_concurrency: int = Field(256, gt=0)
    queue_timeout_ms: float = Field(50.0, ge=0)
    max_queue: int = Field(64, ge=0)
    # Mock provider only: embedding dimensions and an artificial latency.
    mock_latency_ms: float = Field(0.0, ge=0)
    mock_embedding_dims: int = Field(64, gt=0, le=4096)

    @model_validator(mode="after")
    def _needs_url(self) -> ProviderSettings:
        if self.kind != "mock" and not self.base_url:
            raise ValueError(f"base_url is required for kind '{self.kind}'")
        if self.kind == "azure-openai" and not self.api_version:
            raise ValueError("api_version is required for kind 'azure-openai'")
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return self


class BudgetSettings(_Model):
    """Period budgets (UTC calendar day and month). USD amounts are exact decimals."""

    # Counters are exact integers (USD in pico-dollars) and must fit the state store's range.
    tokens_per_day: int | None = Field(None, ge=0, le=10**15)
    tokens_per_month: int | None = Field(None, ge=0, le=10**15)
    usd_per_day: Decimal | None = Field(None, ge=0, le=4_000_000, decimal_places=6)
    usd_per_month: Decimal | None = Field(None, ge=0, le=4_000_000, decimal_places=6)

    _exact = field_validator("usd_per_day", "usd_per_month", mode="before")(exact_decimal)


class RateLimitSettings(_Model):
    requests_per_minute: int | None = Field(None, ge=0, le=10**10)
    tokens_per_minute: int | None = Field(None, ge=0, le=10**10)


class LimitScope(_Model):
    """Budgets and rate limits for one key or one feature of a tenant."""

    budgets: BudgetSettings = BudgetSettings()
    rate_limits: RateLimitSettings = RateLimitSettings()


class RouteBudgetSettings(_Model):
    tokens_per_day: int | None = Field(None, ge=0, le=10**15)
    usd_per_day: Decimal | None = Field(None, ge=0, le=4_000_000, decimal_places=6)

    _exact = field_validator("usd_per_day", mode="before")(exact_decimal)


class TargetSettings(_Model):
    provider: str
    model: str
    # Lower priority is tried first; targets of equal priority share load by weight. A target
    # without one takes its position in the list, so a plain list is a failover order.
    priority: int = 0
    weight: float = Field(1.0, gt=0)

    @cached_property  # read several times on every request
    def key(self) -> str:
        return f"{self.provider}/{self.model}"


class BackoffSettings(_Model):
    base_s: float = Field(0.05, ge=0)
    cap_s: float = Field(2.0, ge=0)


class RouteSettings(_Model):
    targets: Annotated[list[TargetSettings], Field(min_length=1)]
    max_tokens: int | None = Field(None, gt=0)
    description: str = ""
    # Attempts left after the first, across all targets.
    retries: int = Field(2, ge=0, le=10)
    # The whole request, every attempt and wait included.
    deadline_s: float = Field(60.0, gt=0)
    # Each attempt gets the smaller of this and what is left of the deadline (default: the
    # provider's timeout_s).
    attempt_timeout_s: float | None = Field(None, gt=0)
    # Prompt plus completion tokens over all attempts of one request.
    token_budget: int | None = Field(None, gt=0)
    # A prompt estimated above this is refused (context_length_exceeded) before any upstream call.
    max_input_tokens: int | None = Field(None, gt=0)
    # A budget for the route across all tenants.
    budget: RouteBudgetSettings = RouteBudgetSettings()
    backoff: BackoffSettings = BackoffSettings()

    @model_validator(mode="before")
    @classmethod
    def _default_priorities(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("targets"), list):
            data = {**data, "targets": [
                {"priority": i, **t} if isinstance(t, dict) else t for i, t in enumerate(data["targets"])]}
        return data


class BreakerSettings(_Model):
    window_s: float = Field(30.0, gt=0)
    min_requests: int = Field(10, ge=1)
    failure_rate: float = Field(0.5, gt=0, le=1)
    consecutive_failures: int = Field(5, ge=1)
    cooldown_s: float = Field(15.0, gt=0)
    half_open_probes: int = Field(2, ge=1)
    success_threshold: int = Field(3, ge=1)
    # A target shared by tenants opens for all only once this many tenants tripped their own
    # breakers on it (capped at the number of tenants that may reach the target); until then only
    # the tenants whose calls fail are shed. See README, Resilience.
    min_tenants: int = Field(2, ge=1)


class ResilienceSettings(_Model):
    breaker: BreakerSettings = BreakerSettings()
    # Breaker transitions are posted here as Slack-compatible JSON ({"text": ...}).
    webhook_url: str | None = Field(default=None, repr=False)


class TenantSettings(_Model):
    routes: list[str] = Field(default_factory=lambda: ["*"])
    # Requests of this tenant in flight at once; past it: 429 with retry-after at once.
    max_in_flight: int | None = Field(None, gt=0)
    budgets: BudgetSettings = BudgetSettings()
    rate_limits: RateLimitSettings = RateLimitSettings()
    # Narrower limits for one key (by key id: key_... or env:VAR) or one X-Gateway-Feature value.
    keys: dict[str, LimitScope] = Field(default_factory=dict)
    features: dict[str, LimitScope] = Field(default_factory=dict)
    api_keys: list[str] = Field(default_factory=list, repr=False)
    description: str = ""

    def allows(self, route: str) -> bool:
        return "*" in self.routes or route in self.routes


class StateErrorPolicy(_Model):
    budgets: Literal["closed", "open"] = "closed"
    rate_limits: Literal["closed", "open"] = "open"


class LimitsSettings(_Model):
    # A reservation left by a crashed process is released after this.
    reservation_ttl_s: float = Field(300.0, gt=0)
    # When the state store is down: refuse (closed) or serve unchecked (open).
    on_state_error: StateErrorPolicy = StateErrorPolicy()
    # Prompt estimates for providers tiktoken does not know exactly are raised by this share.
    estimate_margin: float = Field(0.10, ge=0, le=2)
    # A request under a token or USD budget with no max_tokens gets this one, so the reservation
    # bounds what the provider can spend.
    default_max_tokens: int = Field(4096, gt=0)


class PathSettings(_Model):
    policies: str = "../policies"
    prompts: str = "../prompts"
    evals: str = "../evals"
    pricing: str = "pricing.yaml"


class FileConfig(_Model):
    """The shape of config/gateway.yaml."""

    server: ServerSettings = ServerSettings()
    storage: StorageSettings = StorageSettings()
    paths: PathSettings = PathSettings()
    resilience: ResilienceSettings = ResilienceSettings()
    limits: LimitsSettings = LimitsSettings()
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    routes: dict[str, RouteSettings] = Field(default_factory=dict)


class PolicyFile(_Model):
    """The shape of one policies/*.yaml file; every section is optional."""

    tenants: dict[str, TenantSettings] = Field(default_factory=dict)


class EnvKey(_Model):
    """A tenant key kept in the environment; `source` names the variable, never the value."""

    tenant: str
    source: str
    secret: str = Field(repr=False)


class Settings(_Model):
    """Everything the gateway runs on, resolved and cross-checked."""

    config_path: Path
    base_dir: Path
    server: ServerSettings
    storage: StorageSettings
    resilience: ResilienceSettings
    limits: LimitsSettings
    pricing: Pricing
    providers: dict[str, ProviderSettings]
    routes: dict[str, RouteSettings]
    tenants: dict[str, TenantSettings]
    env_keys: tuple[EnvKey, ...] = ()
    admin_key: str | None = Field(default=None, repr=False)

    def resolve_path(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    def ledger_url(self) -> str:
        """The ledger URL with a relative SQLite path made relative to the config file."""
        url = self.storage.ledger
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
            return prefix + str(self.resolve_path(url[len(prefix) :]))
        return url


def _interpolate(node: Any, env: Mapping[str, str], file: Path, path: tuple[str, ...]) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, env, file, (*path, str(k))) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, env, file, (*path, str(i))) for i, v in enumerate(node)]
    if isinstance(node, str) and "$" in node:

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in env or env[name] == "":
                raise ConfigError(file, ".".join(path), f"environment variable {name} is not set")
            return env[name]

        return _ENV_REF.sub(sub, node)
    return node


def _read_yaml(file: Path) -> dict[str, Any]:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(file, "", "file not found") from None
    except OSError as e:
        raise ConfigError(file, "", f"cannot read: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "YAML"
        raise ConfigError(file, where, f"invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(file, "", "top level must be a mapping")
    return data


def _validate(model: type[_M], data: dict[str, Any], file: Path) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        raise ConfigError(file, key, msg) from None


def config_path_from(cli_value: str | None, env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(cli_value or env.get("GATEWAY_CONFIG") or DEFAULT_CONFIG)


def load_settings(config_path: Path | str, env: Mapping[str, str] | None = None) -> Settings:
    env = dict(os.environ) if env is None else dict(env)
    file = Path(config_path)
    raw = _interpolate(_read_yaml(file), env, file, ())
    cfg = _validate(FileConfig, raw, file)
    base_dir = file.resolve().parent

    tenants: dict[str, TenantSettings] = {}
    env_keys: list[EnvKey] = []
    policies_dir = Path(cfg.paths.policies)
    policies_dir = policies_dir if policies_dir.is_absolute() else base_dir / policies_dir
    if policies_dir.is_dir():
        for pfile in sorted(policies_dir.glob("*.yaml")) + sorted(policies_dir.glob("*.yml")):
            raw_policy = _read_yaml(pfile)
            # Keep the variable names of api_keys before interpolation: they identify the key.
            sources = _key_sources(raw_policy, pfile)
            policy = _validate(PolicyFile, _interpolate(raw_policy, env, pfile, ()), pfile)
            for name, tenant in policy.tenants.items():
                if name in tenants:
                    raise ConfigError(pfile, f"tenants.{name}", "tenant declared twice")
                _check_name(pfile, f"tenants.{name}", name)
                for route in tenant.routes:
                    if route != "*" and route not in cfg.routes:
                        raise ConfigError(pfile, f"tenants.{name}.routes", f"unknown route '{route}'")
                for i, secret in enumerate(tenant.api_keys):
                    if len(secret) < 16:
                        raise ConfigError(pfile, f"tenants.{name}.api_keys.{i}", "key shorter than 16 characters")
                    env_keys.append(EnvKey(tenant=name, source=sources.get((name, i), f"{name}#{i}"), secret=secret))
                tenants[name] = tenant

    for name, provider in cfg.providers.items():
        _check_name(file, f"providers.{name}", name)
        del provider
    for rname, route_cfg in cfg.routes.items():
        _check_name(file, f"routes.{rname}", rname)
        for i, target in enumerate(route_cfg.targets):
            if target.provider not in cfg.providers:
                raise ConfigError(file, f"routes.{rname}.targets.{i}.provider", f"unknown provider '{target.provider}'")

    pricing = _load_pricing(base_dir, cfg)
    admin_key = env.get("GATEWAY_ADMIN_KEY") or None
    settings = Settings(
        config_path=file,
        base_dir=base_dir,
        server=cfg.server,
        storage=cfg.storage,
        resilience=cfg.resilience,
        limits=cfg.limits,
        pricing=pricing,
        providers=cfg.providers,
        routes=cfg.routes,
        tenants=tenants,
        env_keys=tuple(env_keys),
        admin_key=admin_key,
    )
    check_workers(settings, settings.server.workers)
    return settings


def _scope_limited(budgets: BudgetSettings, rates: RateLimitSettings) -> bool:
    return any(v is not None for v in (*budgets.model_dump().values(), *rates.model_dump().values()))


def has_limits(settings: Settings) -> bool:
    """True when any budget or rate limit is configured: a tenant's, a key's, a feature's, a route's."""
    for tenant in settings.tenants.values():
        if _scope_limited(tenant.budgets, tenant.rate_limits) or any(
                _scope_limited(s.budgets, s.rate_limits) for s in (*tenant.keys.values(), *tenant.features.values())):
            return True
    return any(v is not None for r in settings.routes.values() for v in r.budget.model_dump().values())


def check_workers(settings: Settings, workers: int, *, flag: bool = False) -> None:
    """Several worker processes on the in-process state store would each keep their own counters,
    multiplying every budget and rate limit by the number of workers: refused whenever any is set.
    (A tenant's max_in_flight is per process on any store, Redis included: not a reason to refuse.)"""
    if workers <= 1 or settings.storage.state != "memory" or not has_limits(settings):
        return
    fix = ("set storage.state: redis://... so the workers share one set of counters "
           f"(or run {'--workers 1' if flag else 'server.workers: 1'})")
    if flag:
        raise ConfigError(settings.config_path, "storage.state",
                          f"memory state cannot be shared by --workers {workers}: each worker would keep its own "
                          f"budget and rate-limit counters; {fix}")
    raise ConfigError(settings.config_path, "server.workers",
                      f"{workers} workers on storage.state: memory would each keep their own budget and rate-limit "
                      f"counters; {fix}")


def _load_pricing(base_dir: Path, cfg: FileConfig) -> Pricing:
    pfile = Path(cfg.paths.pricing)
    pfile = pfile if pfile.is_absolute() else base_dir / pfile
    if not pfile.exists():
        return Pricing()
    pricing = _validate(Pricing, _read_yaml(pfile), pfile)
    for key in pricing.prices:
        provider = key.partition("/")[0]
        if provider not in cfg.providers:
            raise ConfigError(pfile, f"prices.{key}", f"unknown provider '{provider}' (keys are provider/model)")
    # The cache-write prices' defaults follow the provider's kind.
    return pricing.for_providers({name: p.kind for name, p in cfg.providers.items()})


def _check_name(file: Path, key: str, name: str) -> None:
    if not re.match(_NAME, name):
        raise ConfigError(file, key, "names may hold letters, digits and . _ : - (at most 128)")


def _key_sources(raw: dict[str, Any], file: Path) -> dict[tuple[str, int], str]:
    out: dict[tuple[str, int], str] = {}
    tenants = raw.get("tenants")
    if not isinstance(tenants, dict):
        return out
    for name, t in tenants.items():
        keys = t.get("api_keys") if isinstance(t, dict) else None
        if isinstance(keys, list):
            for i, k in enumerate(keys):
                m = _ENV_REF.fullmatch(k) if isinstance(k, str) else None
                if m is None:
                    # A key written into a file is a secret in a file: refuse it.
                    raise ConfigError(file, f"tenants.{name}.api_keys.{i}",
                                      "must name an environment variable, like ${ACME_API_KEY}")
                out[(str(name), i)] = f"env:{m.group(1)}"
    return out
