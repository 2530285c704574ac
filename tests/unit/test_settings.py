"""Config loading: interpolation, validation and one-line errors naming the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import ConfigError, check_workers, config_path_from, load_settings

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, config: str, tenants: str | None = None) -> Path:
    (tmp_path / "config").mkdir()
    path = tmp_path / "config" / "gateway.yaml"
    path.write_text(config)
    if tenants is not None:
        (tmp_path / "policies").mkdir()
        (tmp_path / "policies" / "tenants.yaml").write_text(tenants)
    return path


def test_shipped_config_loads_with_no_environment() -> None:
    settings = load_settings(REPO / "config" / "gateway.yaml", env={})
    assert settings.storage.state == "memory"
    assert settings.routes["demo"].targets[0].provider == "mock"
    assert "demo" in settings.tenants
    assert settings.ledger_url() == "sqlite:///" + str(REPO / ".gateway" / "ledger.db")
    assert settings.admin_key is None


def test_full_example_loads_when_its_secrets_are_set() -> None:
    env = {"OPENAI_API_KEY": "sk-a", "ANTHROPIC_API_KEY": "sk-b", "AZURE_OPENAI_KEY": "k"}
    settings = load_settings(REPO / "config" / "examples" / "full.yaml", env=env)
    assert {p.kind for p in settings.providers.values()} == {"openai", "anthropic", "azure-openai", "mock"}
    assert settings.providers["openai"].api_key == "sk-a"
    assert settings.routes["support-bot"].max_tokens == 512
    assert "sk-a" not in repr(settings)  # secrets stay out of reprs (and so out of tracebacks)


def test_full_example_names_the_missing_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(REPO / "config" / "examples" / "full.yaml", env={})
    assert str(info.value).endswith(
        "full.yaml: providers.openai.api_key: environment variable OPENAI_API_KEY is not set")


def test_env_keys_and_admin_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "routes: {r: {targets: [{provider: m, model: x}]}}\nproviders: {m: {kind: mock}}\n",
                  'tenants: {acme: {routes: [r], api_keys: ["${ACME_KEY}"]}}\n')
    settings = load_settings(path, env={"ACME_KEY": "k" * 20, "GATEWAY_ADMIN_KEY": "adm"})
    (key,) = settings.env_keys
    assert key.tenant == "acme" and key.source == "env:ACME_KEY" and key.secret == "k" * 20
    assert settings.admin_key == "adm"
    assert settings.tenants["acme"].allows("r") and not settings.tenants["acme"].allows("other")


@pytest.mark.parametrize(("config", "tenants", "message"), [
    ("server: {port: 70000}\n", None, "gateway.yaml: server.port: "),
    ("storage: {state: 'mysql://x'}\n", None, "gateway.yaml: storage.state: must be 'memory' or a redis:// URL"),
    ("providers: {p: {kind: openai}}\n", None, "gateway.yaml: providers.p: base_url is required"),
    ("providers: {p: {kind: azure-openai, base_url: 'https://x'}}\n", None, "api_version is required"),
    ("providers: {p: {kind: cohere, base_url: 'https://x'}}\n", None, "gateway.yaml: providers.p.kind: "),
    ("routes: {r: {targets: []}}\n", None, "gateway.yaml: routes.r.targets: "),
    ("routes: {'bad name': {targets: [{provider: m, model: x}]}}\nproviders: {m: {kind: mock}}\n", None,
     "gateway.yaml: routes.bad name: names may hold"),
    ("{}\n", "tenants: {acme: {routes: [missing]}}\n", "tenants.yaml: tenants.acme.routes: unknown route 'missing'"),
    ("{}\n", "tenants: {acme: {api_keys: ['literal-secret-in-a-file']}}\n",
     "tenants.yaml: tenants.acme.api_keys.0: must name an environment variable"),
    ("{}\n", "tenants: {acme: {api_keys: ['${SHORT}']}}\n", "tenants.acme.api_keys.0: key shorter than 16"),
    ("{}\n", "tenants: {acme: {colour: red}}\n", "tenants.yaml: tenants.acme.colour: unknown key"),
    ("- a list\n", None, "gateway.yaml: top level must be a mapping"),
])
def test_mistakes_name_file_and_key(tmp_path: Path, config: str, tenants: str | None, message: str) -> None:
    path = _write(tmp_path, config, tenants)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={"SHORT": "abc"})
    text = str(info.value)
    assert message in text and "\n" not in text


def test_config_path_precedence() -> None:
    assert str(config_path_from("a.yaml", {"GATEWAY_CONFIG": "b.yaml"})) == "a.yaml"
    assert str(config_path_from(None, {"GATEWAY_CONFIG": "b.yaml"})) == "b.yaml"
    assert str(config_path_from(None, {})) == "config/gateway.yaml"


@pytest.mark.parametrize("value", ["0", "1001", "'soon'"])
def test_the_journal_commit_interval_is_bounded(tmp_path: Path, value: str) -> None:
    path = _write(tmp_path, f"storage: {{journal_commit_ms: {value}}}\n", None)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert "gateway.yaml: storage.journal_commit_ms: " in str(info.value) and "\n" not in str(info.value)
    path.write_text("storage: {journal_commit_ms: 5}\n")
    assert load_settings(path, env={}).storage.journal_commit_ms == 5
    path.write_text("{}\n")
    assert load_settings(path, env={}).storage.journal_commit_ms == 20


_ONE_ROUTE = "routes: {r: {targets: [{provider: m, model: x}]}}\nproviders: {m: {kind: mock}}\n"


@pytest.mark.parametrize("tenants", [
    "tenants: {acme: {budgets: {tokens_per_day: 2000}}}\n",
    "tenants: {acme: {rate_limits: {requests_per_minute: 40}}}\n",
    "tenants: {acme: {keys: {key_0123456789abcdef: {budgets: {usd_per_month: 5}}}}}\n",
    "tenants: {acme: {features: {summarize: {rate_limits: {tokens_per_minute: 100}}}}}\n",
])
def test_several_workers_on_memory_state_with_limits_are_refused(tmp_path: Path, tenants: str) -> None:
    path = _write(tmp_path, "server: {workers: 2}\n" + _ONE_ROUTE, tenants)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    text = str(info.value)
    assert "gateway.yaml: server.workers: 2 workers on storage.state: memory" in text, text
    assert "storage.state: redis://..." in text and "\n" not in text


def test_a_route_budget_alone_refuses_several_memory_workers(tmp_path: Path) -> None:
    path = _write(tmp_path, "server: {workers: 3}\nroutes: {r: {targets: [{provider: m, model: x}], "
                            "budget: {usd_per_day: 1}}}\nproviders: {m: {kind: mock}}\n")
    with pytest.raises(ConfigError, match=r"server\.workers: 3 workers"):
        load_settings(path, env={})


@pytest.mark.parametrize(("config", "tenants"), [
    # no limit anywhere: nothing to multiply (a tenant's max_in_flight is per process on any store)
    ("server: {workers: 2}\n" + _ONE_ROUTE, "tenants: {acme: {max_in_flight: 4}}\n"),
    # shared counters
    ("server: {workers: 2}\nstorage: {state: 'redis://127.0.0.1:6379/0'}\n" + _ONE_ROUTE,
     "tenants: {acme: {budgets: {tokens_per_day: 2000}, rate_limits: {requests_per_minute: 40}}}\n"),
    # one worker
    (_ONE_ROUTE, "tenants: {acme: {budgets: {tokens_per_day: 2000}}}\n"),
])
def test_workers_allowed_when_nothing_is_multiplied(tmp_path: Path, config: str, tenants: str) -> None:
    assert load_settings(_write(tmp_path, config, tenants), env={}).tenants["acme"]


def test_the_workers_flag_is_checked_like_the_key(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, _ONE_ROUTE, "tenants: {acme: {budgets: {tokens_per_day: 2}}}\n"),
                             env={})
    check_workers(settings, 1, flag=True)
    with pytest.raises(ConfigError) as info:
        check_workers(settings, 2, flag=True)
    assert "gateway.yaml: storage.state: memory state cannot be shared by --workers 2" in str(info.value)
    assert "storage.state: redis://..." in str(info.value)


@pytest.mark.parametrize(("server", "message"), [
    ("{max_head_bytes: 100}", "server.max_head_bytes: Input should be greater than or equal to 1024"),
    ("{max_headers: 0}", "server.max_headers: "),
    ("{head_timeout_s: 0}", "server.head_timeout_s: "),
    ("{body_timeout_s: -1}", "server.body_timeout_s: "),
    ("{min_body_rate_bytes_s: 0}", "server.min_body_rate_bytes_s: "),
    ("{head_timeout: 5}", "server.head_timeout: unknown key"),
])
def test_request_read_limits_are_validated(tmp_path: Path, server: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, f"server: {server}\n"), env={})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_request_read_limits_default_to_bounds_a_slow_or_huge_request_cannot_pass() -> None:
    server = load_settings(REPO / "config" / "gateway.yaml", env={}).server
    assert (server.max_head_bytes, server.max_headers) == (32_768, 100)
    assert (server.head_timeout_s, server.body_timeout_s, server.min_body_rate_bytes_s) == (10.0, 20.0, 1024)
