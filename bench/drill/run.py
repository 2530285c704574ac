"""Resilience load drill: the gateway fronting a 50%-failing primary and a healthy secondary.

Starts two mock upstreams and one gateway (each a subprocess on a free port), plays a bursty
payload mix through Locust at twice the stated expected load, and reports latency percentiles,
the error rate and attempts per request. Exits 1 when the route's p95 or error-rate objective is
missed. See bench/drill/README.md.

    .venv/bin/python bench/drill/run.py [--duration 60] [--expected-rps 40] [--p95-ms 250]
                                        [--max-error-rate 0.005] [--out bench/results/drill.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import orjson
import yaml
from traffic import BURST_EVERY_S, BURST_FACTOR, BURST_LEN_S, planned_requests

HERE = Path(__file__).resolve().parent
GATEWAY_READY = r"gateway listening on (?P<url>http://\S+)"
MOCK_READY = r"mock-upstream listening on (?P<url>http://\S+)"
# Upper bounds on the drill; it must never hang a terminal or a CI job.
START_TIMEOUT_S = 30.0
LOCUST_GRACE_S = 60.0


class Proc:
    """A child process whose output goes to a log file; stopped by its own PID only."""

    def __init__(self, name: str, args: list[str], log: Path, env: dict[str, str]) -> None:
        self.name, self.log = name, log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, pattern: str, timeout: float = START_TIMEOUT_S) -> str:
        """The URL from the process's ready line; the log file is polled, so no reader thread is needed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log.read_text(errors="replace"))
            if match:
                return match.group("url").rstrip("/")
            if self.popen.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start (exit code {self.popen.poll()}):\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


def write_config(root: Path, primary_url: str, secondary_url: str) -> Path:
    """The same layout as tests/support/gateway.py's write_config: config/ and policies/ side by side."""
    (root / "config").mkdir()
    (root / "policies").mkdir()
    config = {
        "server": {"host": "127.0.0.1", "port": 0, "workers": 1, "max_in_flight": 4096},
        "storage": {"state": "memory", "ledger": f"sqlite:///{root / 'ledger.db'}"},
        "paths": {"policies": "../policies"},
        "providers": {
            "primary": {"kind": "openai", "base_url": primary_url + "/v1", "api_key": "sk-drill-primary"},
            "secondary": {"kind": "openai", "base_url": secondary_url + "/v1", "api_key": "sk-drill-secondary"},
        },
        "routes": {"support": {
            "targets": [{"provider": "primary", "model": "gpt-4o-mini", "priority": 0},
                        {"provider": "secondary", "model": "gpt-4o-mini", "priority": 1}],
            "retries": 2, "deadline_s": 5, "attempt_timeout_s": 2,
        }},
    }
    path = root / "config" / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    # The key is named, never written: the gateway reads it from DRILL_KEY.
    tenants = {"tenants": {"drill": {"routes": ["support"], "api_keys": ["${DRILL_KEY}"]}}}
    (root / "policies" / "tenants.yaml").write_text(yaml.safe_dump(tenants, sort_keys=False))
    return path


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list; 0 for an empty one."""
    if not sorted_values:
        return 0.0
    return sorted_values[max(0, math.ceil(q / 100 * len(sorted_values)) - 1)]


def summarize(samples: list[list[Any]]) -> dict[str, Any]:
    latencies = sorted(s[1] for s in samples)
    errors = sum(1 for s in samples if not s[2])
    return {
        "requests": len(samples),
        "p50_ms": round(percentile(latencies, 50), 1),
        "p95_ms": round(percentile(latencies, 95), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "max_ms": round(latencies[-1], 1) if latencies else 0.0,
        "errors": errors,
        "error_rate": errors / len(samples) if samples else 0.0,
        "attempts_mean": round(sum(s[4] for s in samples) / len(samples), 3) if samples else 0.0,
    }


def upstream_counts(url: str) -> dict[str, Any]:
    """What a mock saw, from its request log; `seq` counts every request even past the log's bound."""
    entries = httpx.get(url + "/_mock/requests", timeout=30).json()
    by_status = Counter(str(e["status"]) for e in entries)
    return {"requests": entries[-1]["seq"] if entries else 0, "logged": len(entries),
            "by_status": dict(sorted(by_status.items()))}


def gateway_latencies(log: Path) -> dict[str, float]:
    """The gateway's own view from its access log: with client and servers sharing the CPUs, the gap to the
    client-side figures is time spent waiting for a core or in the load generator."""
    values = sorted(orjson.loads(line)["latency_ms"] for line in log.read_bytes().splitlines()
                    if line.startswith(b"{") and b'"gateway.access"' in line)
    return {f"p{q}_ms": round(percentile(values, q), 1) for q in (50, 95, 99)} | {"requests": len(values)}


def run_locust(root: Path, gateway_url: str, env: dict[str, str], duration: float, baseline_rps: float,
               procs: list[Proc]) -> list[list[Any]]:
    samples_path = root / "samples.json"
    locust_env = {**env, "DRILL_BASELINE_RPS": str(baseline_rps), "DRILL_DURATION_S": str(duration),
                  "DRILL_SAMPLES": str(samples_path)}
    args = [sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless", "--host", gateway_url,
            # Users leaving after a burst finish the request they are in, so none is cut off and lost.
            "--stop-timeout", "10", "--only-summary", "--loglevel", "WARNING"]
    locust = Proc("locust", args, root / "locust.log", locust_env)
    procs.append(locust)
    try:
        # Locust exits 1 when any request failed; that is a finding, reported below, not a crash.
        locust.popen.wait(duration + LOCUST_GRACE_S)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"locust still running {LOCUST_GRACE_S:.0f}s past the drill:\n{locust.tail()}") from None
    if not samples_path.exists():
        raise RuntimeError(f"locust wrote no samples (exit code {locust.popen.returncode}):\n{locust.tail()}")
    samples: list[list[Any]] = json.loads(samples_path.read_text())
    return samples


def drill(args: argparse.Namespace) -> dict[str, Any]:
    baseline_rps = 2 * args.expected_rps
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory(prefix="gateway-drill-") as tmp:
        root = Path(tmp)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "DRILL_KEY": "sk-drill-" + secrets.token_urlsafe(24)}
        try:
            mock = [sys.executable, "-m", "gateway", "mock-upstream", "--port", "0"]
            procs.append(Proc("mock A (primary)", [*mock, "--error-rate", "0.5", "--error-status", "500,503",
                                                    "--latency-ms", "20", "--latency-jitter-ms", "20", "--seed", "1"],
                              root / "primary.log", env))
            procs.append(Proc("mock B (secondary)", [*mock, "--latency-ms", "30", "--latency-jitter-ms", "20"],
                              root / "secondary.log", env))
            primary_url, secondary_url = (p.wait_ready(MOCK_READY) for p in procs)
            config = write_config(root, primary_url, secondary_url)
            gateway = Proc("gateway", [sys.executable, "-m", "gateway", "serve", "--config", str(config),
                                       "--port", "0", "--workers", "1"], root / "gateway.log", env)
            procs.append(gateway)
            gateway_url = gateway.wait_ready(GATEWAY_READY)
            print(f"drill: {args.duration:.0f}s at {baseline_rps:g} req/s (2 x expected {args.expected_rps:g}), "
                  f"bursts of {BURST_LEN_S:g}s at x{BURST_FACTOR:g} every {BURST_EVERY_S:g}s", flush=True)

            samples = run_locust(root, gateway_url, env, args.duration, baseline_rps, procs)
            upstream = {"primary": upstream_counts(primary_url), "secondary": upstream_counts(secondary_url)}
        finally:
            for proc in reversed(procs):
                proc.stop()
        gateway_side = gateway_latencies(root / "gateway.log")

    if not samples:
        raise RuntimeError("the drill sent no requests")
    first = min(s[6] for s in samples)
    last = max(s[6] + s[1] / 1000 for s in samples)
    kinds = sorted({s[0] for s in samples})
    histogram = Counter(s[4] for s in samples)
    return {
        "settings": {"duration_s": args.duration, "expected_rps": args.expected_rps, "baseline_rps": baseline_rps,
                     "burst": {"every_s": BURST_EVERY_S, "length_s": BURST_LEN_S, "factor": BURST_FACTOR},
                     "locust": version("locust")},
        "planned_requests": round(planned_requests(args.duration, baseline_rps)),
        "planned_rps": round(planned_requests(args.duration, baseline_rps) / args.duration, 1),
        "achieved_rps": round(len(samples) / (last - first), 1),
        "overall": summarize(samples),
        "by_kind": {k: summarize([s for s in samples if s[0] == k]) for k in kinds},
        "status_counts": dict(sorted(Counter(str(s[3]) for s in samples).items())),
        # 0 means the header was missing (the gateway answered before routing, or the connection failed).
        "attempts_histogram": {str(n): histogram.get(n, 0) for n in sorted({1, 2, 3, *histogram})},
        "served_by": dict(sorted(Counter(s[5] or "-" for s in samples).items())),
        "upstream": upstream,
        "gateway_side": gateway_side,
        # Load generator, gateway and mocks share this machine's CPUs.
        "host_cpus": os.cpu_count(),
    }


def check(report: dict[str, Any], p95_ms: float, max_error_rate: float) -> list[str]:
    overall = report["overall"]
    report["objectives"] = {
        "p95_ms": {"limit": p95_ms, "value": overall["p95_ms"], "met": overall["p95_ms"] <= p95_ms},
        "error_rate": {"limit": max_error_rate, "value": overall["error_rate"],
                       "met": overall["error_rate"] <= max_error_rate},
    }
    missed = [f"{name}: {o['value']:g} > {o['limit']:g}" for name, o in report["objectives"].items() if not o["met"]]
    report["passed"] = not missed
    return missed


def print_report(report: dict[str, Any]) -> None:
    rows = [("all", report["overall"]), *report["by_kind"].items()]
    print(f"\n{'kind':<11}{'requests':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}"
          f"{'err rate':>10}{'attempts':>10}")
    for name, s in rows:
        print(f"{name:<11}{s['requests']:>9}{s['p50_ms']:>9.1f}{s['p95_ms']:>9.1f}{s['p99_ms']:>9.1f}"
              f"{s['max_ms']:>9.1f}{s['errors']:>8}{s['error_rate']:>10.4f}{s['attempts_mean']:>10.3f}")
    print(f"\nrequests {report['overall']['requests']} of {report['planned_requests']} planned, "
          f"{report['achieved_rps']} req/s achieved of {report['planned_rps']} planned (bursts included)")
    print(f"statuses {report['status_counts']}")
    print(f"attempts per request {report['attempts_histogram']}   served by {report['served_by']}")
    for name, up in report["upstream"].items():
        print(f"upstream {name}: {up['requests']} requests, statuses {up['by_status']}"
              + (f" (of the last {up['logged']} logged)" if up["logged"] < up["requests"] else ""))
    gw = report["gateway_side"]
    print(f"gateway-side latency (access log) p50 {gw['p50_ms']} / p95 {gw['p95_ms']} / p99 {gw['p99_ms']} ms "
          f"on {report['host_cpus']} CPUs shared with the load generator and mocks")
    for name, o in report["objectives"].items():
        print(f"objective {name} <= {o['limit']:g}: {o['value']:.4g} {'met' if o['met'] else 'MISSED'}")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--expected-rps", type=float, default=40.0,
                        help="the stated expected load; the drill plays twice this (default 40)")
    parser.add_argument("--p95-ms", type=float, default=250.0, help="p95 latency objective (default 250)")
    parser.add_argument("--max-error-rate", type=float, default=0.005, help="error-rate objective (default 0.005)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/drill.json"), help="JSON report path")
    args = parser.parse_args()
    # A CI timeout or `kill` (SIGTERM) then stops the processes the drill started, as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)

    try:
        report = drill(args)
    except RuntimeError as exc:
        print(f"drill: failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the processes were already stopped on the way out of drill()
        print("drill: interrupted", file=sys.stderr)
        return 130
    missed = check(report, args.p95_ms, args.max_error_rate)
    print_report(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nreport written to {args.out}")
    for line in missed:
        print(f"drill: objective missed: {line}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
