"""Bounded soak: does the gateway's memory stay flat under a steady load?

nginx (the fixed-body mock) + the gateway's default scenario (1 worker), wrk at a steady moderate load for
--duration seconds (default 600), the RSS of the gateway's process tree sampled every 5 s. The first --warmup
seconds (default 60) are warm-up (caches, pools and allocator arenas fill up); after it, RSS must grow by under 5%.

    .venv/bin/python bench/perf/soak.py [--duration 600] [--warmup 60] [--connections 8]

Exit 0: growth under the limit; 1: growth at or over it; 2: the soak could not run. JSON goes to
bench/results/soak-<timestamp>.json. Every process it starts is stopped by process group, also on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gateway_proc
import harness
import nginx
import wrk
from harness import REPO, BenchError, Child, Registry
from scenarios import BASE, request_body

PRINT_EVERY_S = 60.0


@dataclass
class Soak:
    duration_s: float
    warmup_s: float
    connections: int
    interval_s: float
    samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds since load began, RSS MB)
    result: wrk.WrkResult | None = None
    printed: int = 0  # samples already shown in the per-minute table

    def warm_rss(self) -> float | None:
        """RSS at the end of warm-up: the first sample taken at or after it."""
        return next((rss for t, rss in self.samples if t >= self.warmup_s), None)

    def after_warmup(self) -> list[float]:
        return [rss for t, rss in self.samples if t >= self.warmup_s]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds counted as warm-up (default 60)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections, the steady load (default 8)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between RSS samples (default 5)")
    parser.add_argument("--max-growth", type=float, default=5.0, help="RSS growth %% that fails (default 5)")
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default bench/results/soak-<ts>.json)")
    args = parser.parse_args(argv)
    if args.duration <= args.warmup or args.warmup < 0 or args.connections < 1 or args.interval <= 0:
        parser.error("need duration > warmup >= 0, connections >= 1, interval > 0")
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(soak: Soak, registry: Registry, tmp: Path) -> dict[str, str]:
    """Start everything, hold the load, sample RSS; returns the versions of what ran."""
    _, upstream = nginx.start(registry, tmp / "nginx")
    default = BASE[0]
    gateway = gateway_proc.start(registry, tmp / "gateway", default, upstream + "/v1", 1, gateway_proc.Databases())
    script = wrk.lua_script(tmp / "request.lua", request_body(), gateway.headers)
    log(f"soak: wrk -c{soak.connections} for {soak.duration_s:g} s against {gateway.url}; RSS every "
        f"{soak.interval_s:g} s, warm-up {soak.warmup_s:g} s")
    load = registry.spawn("wrk", wrk.command(gateway.url + "/v1/chat/completions", script, soak.connections,
                                             soak.duration_s), tmp / "wrk.log")
    hold(soak, load, gateway.child)
    registry.stop(load)
    soak.result = wrk.parse(load.log.read_text(errors="replace"), soak.connections, soak.duration_s)
    if soak.result.errors:
        log(f"gateway log (non-access lines):\n{gateway_proc.log_problems(gateway.child.log)}")
    return {"gateway": harness.package_version("gateway"), "nginx": nginx.version(), "wrk": wrk.version()}


def hold(soak: Soak, load: Child, server: Child) -> None:
    """Sample the server's RSS on a fixed grid until wrk ends (bounded: duration plus a minute)."""
    began = time.monotonic()
    deadline = began + soak.duration_s + 60
    next_sample, next_print = began, began + PRINT_EVERY_S
    while load.alive():
        now = time.monotonic()
        if now > deadline:
            raise BenchError("wrk did not end on time")
        if not server.alive():
            raise BenchError(f"the gateway exited during the soak; log tail:\n{server.tail()}")
        if now >= next_sample:
            soak.samples.append((now - began, harness.tree_rss_mb(server.pid)[0]))
            next_sample += soak.interval_s
        if now >= next_print:
            print_minute(soak)
            next_print += PRINT_EVERY_S
        time.sleep(max(0.01, min(next_sample, next_print) - time.monotonic()))
    soak.samples.append((time.monotonic() - began, harness.tree_rss_mb(server.pid)[0]))
    print_minute(soak)


def print_minute(soak: Soak) -> None:
    """One table row per minute: that minute's samples and where the last one stands against warm-up."""
    if soak.printed == 0:
        print(f"| t (s) | RSS MB, every {soak.interval_s:g} s | vs end of warm-up |\n|---:|---|---:|")
    fresh = soak.samples[soak.printed:]
    if not fresh:
        return
    soak.printed = len(soak.samples)
    warm = soak.warm_rss()
    vs = f"{(fresh[-1][1] - warm) / warm * 100:+.1f} %" if warm and fresh[-1][0] >= soak.warmup_s else "warm-up"
    print(f"| {fresh[-1][0]:.0f} | {' '.join(f'{rss:.1f}' for _, rss in fresh)} | {vs} |", flush=True)


def summary(soak: Soak, max_growth: float, completed: bool) -> dict[str, Any]:
    warm, after = soak.warm_rss(), soak.after_warmup()
    end = soak.samples[-1][1] if soak.samples else None
    growth = (end - warm) / warm * 100 if warm and end is not None else None
    peak = max(after) if after else None
    res = soak.result
    return {"warmup_rss_mb": warm, "end_rss_mb": end, "max_rss_mb": peak, "growth_pct": growth,
            "max_growth_pct": (peak - warm) / warm * 100 if warm and peak is not None else None,
            "limit_pct": max_growth, "completed": completed,
            "passed": completed and growth is not None and growth < max_growth,
            "requests": res.requests if res else 0, "rps": res.rps if res else 0.0,
            "non_2xx": res.non_2xx if res else 0, "socket_errors": res.socket_errors if res else 0,
            "p50_ms": res.p50_ms if res else None, "p99_ms": res.p99_ms if res else None}


def print_summary(s: dict[str, Any]) -> None:
    def mb(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f} MB"

    print(f"\nRSS at end of warm-up: {mb(s['warmup_rss_mb'])}; at the end: {mb(s['end_rss_mb'])}; "
          f"max after warm-up: {mb(s['max_rss_mb'])}")
    growth = "n/a" if s["growth_pct"] is None else f"{s['growth_pct']:+.2f} %"
    verdict = ("met" if s["passed"] else "MISSED") if s["completed"] else "not judged: the soak did not complete"
    print(f"Growth after warm-up: {growth} (limit < {s['limit_pct']:g} %): {verdict}")
    if s["completed"]:
        print(f"Requests served: {s['requests']:,} ({s['rps']:,.0f} req/s, p50 {s['p50_ms']:.2f} ms, "
              f"p99 {s['p99_ms']:.2f} ms); errors: {s['non_2xx']} non-2xx, {s['socket_errors']} socket")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    harness.ensure_tools()
    started = datetime.now(UTC)
    soak = Soak(args.duration, args.warmup, args.connections, args.interval)
    registry = Registry()
    tmp = Path(tempfile.mkdtemp(prefix="gateway-soak-"))
    versions: dict[str, str] = {}
    failure = None
    with harness.signals_raise():
        try:
            versions = run(soak, registry, tmp)
        except BenchError as e:
            failure = str(e)
        except (KeyboardInterrupt, SystemExit):
            failure = "interrupted"
        finally:
            with harness.signals_ignored():
                registry.stop_all()
                shutil.rmtree(tmp, ignore_errors=True)
    if failure:
        log(f"soak: {failure}")
        print_minute(soak)  # the samples taken before it stopped
    result = summary(soak, args.max_growth, completed=failure is None)
    print_summary(result)
    info = harness.machine()
    print(f"Date: {started.strftime('%Y-%m-%d %H:%M:%S UTC')}; {info['nproc']} CPUs, {info['cpu']}; "
          f"wrk -t1 -c{args.connections}, {args.duration:g} s, warm-up {args.warmup:g} s; "
          + ", ".join(f"{k} {v}" for k, v in versions.items()))
    out = args.out or REPO / "bench" / "results" / f"soak-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": started.isoformat(), "machine": info, "versions": versions,
                               "options": vars(args) | {"out": str(out)}, "failure": failure,
                               "samples": soak.samples, "summary": result}, indent=2) + "\n")
    print(f"JSON: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    if failure:
        return 2
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
