"""Drive load with wrk (Debian's 4.1) and parse what it prints.

wrk's `--latency` prints the 50/75/90/99% points of its latency histogram; those (and req/s, the count of non-2xx/3xx
answers and socket errors) are all a row needs.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import BenchError, Registry, command_output, tool_path

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_TIMEOUT_S = 5  # wrk's own per-request timeout: a stuck request is a counted error, not a stall


@dataclass
class WrkResult:
    connections: int
    duration_s: float
    requests: int
    rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def lua_script(path: Path, body: dict[str, object], headers: dict[str, str]) -> Path:
    """The request wrk sends on every connection: method, body and headers."""
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_string(json.dumps(body, separators=(',', ':')))}",
             'wrk.headers["Content-Type"] = "application/json"']
    lines += [f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _lua_string(text: str) -> str:
    """A double-quoted Lua string literal (decimal escapes for control bytes; JSON and headers have none anyway)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\{ord(ch):03d}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def run(registry: Registry, url: str, script: Path, connections: int, duration_s: float, log_dir: Path) -> WrkResult:
    """One wrk run (1 thread); wrk is tracked like any child so an interrupt stops it too."""
    args = command(url, script, connections, duration_s)
    log = log_dir / f"wrk-{connections}.log"
    log.write_bytes(b"")
    child = registry.spawn("wrk", args, log)
    try:
        child.popen.wait(duration_s + 60)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish within {duration_s + 60:.0f} s") from None
    finally:
        registry.stop(child)
    output = log.read_text(errors="replace")
    if child.popen.returncode != 0:
        raise BenchError(f"wrk failed (exit {child.popen.returncode}): {output.strip()[-400:]}")
    return parse(output, connections, duration_s)


def command(url: str, script: Path, connections: int, duration_s: float) -> list[str]:
    return [tool_path("wrk"), "-t1", f"-c{connections}", f"-d{_seconds(duration_s)}s", f"--timeout={_TIMEOUT_S}s",
            "--latency", "-s", str(script), url]


def _seconds(value: float) -> int:
    return max(1, round(value))


def parse(output: str, connections: int, duration_s: float) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", output)
    if rps is None or total is None:
        raise BenchError(f"cannot parse wrk output: {output.strip()[-400:]}")
    points = {int(p): _ms(v, u) for p, v, u in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(\w+)", output, re.M)}
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return WrkResult(
        connections=connections, duration_s=duration_s, requests=int(total.group(1)), rps=float(rps.group(1)),
        p50_ms=points.get(50, 0.0), p75_ms=points.get(75, 0.0), p90_ms=points.get(90, 0.0),
        p99_ms=points.get(99, 0.0), non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in sock.groups()) if sock else 0,
    )


def _ms(value: str, unit: str) -> float:
    if unit not in _UNITS_MS:
        raise BenchError(f"unknown wrk time unit {unit!r}")
    return float(value) * _UNITS_MS[unit]


def version() -> str:
    first = command_output([tool_path("wrk"), "-v"]).splitlines()
    return first[0].split(" Copyright")[0].removeprefix("wrk ").strip() if first else "unknown"
