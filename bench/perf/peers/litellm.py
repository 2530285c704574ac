"""Peer: the LiteLLM proxy (``litellm[proxy]`` from PyPI, pinned below) in its own venv under ``root/litellm/venv``.

Run as ``litellm --config <yaml> --host 127.0.0.1 --port N --num_workers 1`` (uvicorn + uvloop, one process) with one
model whose ``litellm_params`` point at the mock upstream as an OpenAI-compatible ``openai/`` deployment. No database
(DATABASE_URL and friends are stripped from the environment), a master key so every request goes through key auth.
- LITELLM_LOCAL_MODEL_COST_MAP=True: use the bundled cost map instead of fetching it from GitHub at import time.
- LITELLM_TELEMETRY_DISABLED=true: the telemetry veto, so nothing is collected or exported.
- LITELLM_LOG=ERROR: also sets uvicorn's log level, which turns off the per-request access log on stdout.
- LITELLM_DONT_SHOW_FEEDBACK_BOX=true: skips the startup banner.
- cwd is root/litellm: the proxy calls load_dotenv(), so it must not pick up a .env from the driver's directory.
1.108.7 is the newest 1.108.x whose ``[proxy]`` extra resolves on PyPI (1.108.8+ pin unpublished extras packages);
the hot-path dependencies are pinned too, at the versions pip resolved for it.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

NAME: str = "LiteLLM"
PATH: str = "/v1/chat/completions"
MODEL: str = "gpt-4o-mini"

VERSION = "1.108.7"
MASTER_KEY = "sk-bench-master-key"
_DEPENDENCY_PINS = (
    "openai==3.57.0",
    "httpx==0.28.1",
    "httpcore==1.0.9",
    "h11==0.16.0",
    "aiohttp==3.14.5",
    "fastapi==0.165.0",
    "starlette==1.10.0",
    "uvicorn==0.54.0",
    "uvloop==0.23.0",
    "pydantic==2.14.4",
    "pydantic_core==2.50.5",
    "orjson==3.13.0",
    "tiktoken==0.14.0",
)
_INSTALL_TIMEOUT_S = 1200
# Variables that would make the proxy use a database, a cache or another provider setup than the config's.
_STRIPPED_ENV = (
    "DATABASE_URL",
    "DIRECT_URL",
    "DATABASE_HOST",
    "DATABASE_USERNAME",
    "DATABASE_PASSWORD",
    "DATABASE_NAME",
    "REDIS_URL",
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_PASSWORD",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_API_BASE",
    "LITELLM_MASTER_KEY",
    "LITELLM_CONFIG_PATH",
    "CONFIG_FILE_PATH",
)


def _dir(root: pathlib.Path) -> pathlib.Path:
    return root / "litellm"


def _venv(root: pathlib.Path) -> pathlib.Path:
    return _dir(root) / "venv"


def install(root: pathlib.Path) -> str:
    """Create root/litellm/venv and pip install the pinned litellm[proxy] into it, unless already done."""
    peer_dir = _dir(root)
    venv = _venv(root)
    marker = peer_dir / f".installed-{VERSION}"
    if marker.is_file() and (venv / "bin" / "litellm").is_file():
        return VERSION
    peer_dir.mkdir(parents=True, exist_ok=True)
    python = venv / "bin" / "python"
    steps: list[list[str]] = []
    if not python.is_file():
        steps.append([sys.executable, "-m", "venv", str(venv)])
    steps.append(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"litellm[proxy]=={VERSION}",
            *_DEPENDENCY_PINS,
        ]
    )
    for cmd in steps:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=_INSTALL_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"litellm install: {cmd[2] if cmd[1] == '-m' else cmd[0]} failed: {exc}") from exc
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
            reason = errors[-1] if errors else (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"litellm install failed (exit {done.returncode}): {reason}")
    if not (venv / "bin" / "litellm").is_file():
        raise RuntimeError(f"litellm install: {venv / 'bin' / 'litellm'} missing after pip install")
    marker.write_text(VERSION + "\n")
    return VERSION


def headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {MASTER_KEY}"}


def _config(upstream: str) -> str:
    api_base = upstream.rstrip("/") + "/v1"
    return (
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {api_base}\n"
        "      api_key: sk-bench-upstream-dummy\n"
        "litellm_settings:\n"
        "  set_verbose: false\n"
        "  json_logs: false\n"
        "general_settings:\n"
        f"  master_key: {MASTER_KEY}\n"
    )


def start(root: pathlib.Path, upstream: str, port: int, log: pathlib.Path) -> subprocess.Popen[bytes]:
    """Start one uvicorn worker of the LiteLLM proxy on 127.0.0.1:port; readiness: GET /health/liveliness."""
    peer_dir = _dir(root)
    exe = _venv(root) / "bin" / "litellm"
    if not exe.is_file():
        raise RuntimeError(f"litellm is not installed under {peer_dir}; call install() first")
    config = peer_dir / f"config-{port}.yaml"
    config.write_text(_config(upstream))
    env = {k: v for k, v in os.environ.items() if k not in _STRIPPED_ENV}
    env.update(
        {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_TELEMETRY_DISABLED": "true",
            "LITELLM_LOG": "ERROR",
            "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    cmd = [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd,
            cwd=peer_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
