"""Reproducible performance benchmark: the gateway against nginx called directly, and against LiteLLM and Portkey
fronting the same nginx, in one run. See bench/perf/README.md.

    .venv/bin/python bench/perf/run.py [--rows gateway,stream,redis,postgres,workers] [--peers litellm,portkey |
        --no-peers] [--workers 2] [--connections 1,32,64] [--duration 10] [--quick]

Prints a Markdown table (req/s, p50/p99, latency added over nginx, RSS, CPU), the time-to-first-token lines and the
goal ratios, and saves everything as JSON in bench/results/perf-<timestamp>.json. Every process it starts is stopped
by process group when it ends, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import gateway_proc
import harness
import nginx
import ttft
import wrk
from harness import REPO, BenchError, Registry
from scenarios import Scenario, all_scenarios, deep_merge, request_body

HERE = Path(__file__).resolve().parent
PEER_ROOT = REPO / ".bench" / "peers"
PEER_NAMES = ("litellm", "portkey")
PEER_START_TIMEOUT_S = 120.0  # LiteLLM imports for 10-30 s before it listens
DIRECT = "mock direct (nginx)"
DIRECT_STREAM = "mock direct (nginx), streaming"
CPU_CONNECTIONS = 32


@dataclass
class Row:
    name: str
    kind: str  # mock | gateway | peer
    baseline: str | None = None  # the direct row its added latency is measured against
    runs: dict[int, wrk.WrkResult] = field(default_factory=dict)
    rss_mb: float = 0.0
    rss_each_mb: list[float] = field(default_factory=list)
    cpu_pct: float | None = None
    cpu_connections: int | None = None
    skipped: str | None = None

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.runs.values())

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "baseline": self.baseline, "skipped": self.skipped,
                "runs": {str(c): r.as_dict() for c, r in self.runs.items()}, "errors": self.errors,
                "rss_mb": round(self.rss_mb, 1), "rss_each_mb": [round(v, 1) for v in self.rss_each_mb],
                "cpu_pct": None if self.cpu_pct is None else round(self.cpu_pct, 1),
                "cpu_connections": self.cpu_connections}


@dataclass
class Options:
    rows: list[str]
    peers: list[str]
    workers: int
    connections: list[int]
    duration_s: float
    warmup_s: float
    ttft_requests: int
    ttft_warmup: int
    rounds: int
    out: Path


def parse_args(argv: list[str] | None) -> Options:
    keys = [s.key for s in all_scenarios()]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(keys), help=f"gateway rows to run (default: all of {keys})")
    parser.add_argument("--peers", default=",".join(PEER_NAMES), help="peers to run (default: litellm,portkey)")
    parser.add_argument("--no-peers", action="store_true", help="run no peer")
    parser.add_argument("--workers", type=int, default=2, help="workers of the N-workers row (default 2)")
    parser.add_argument("--connections", default="1,32,64", help="wrk connection counts (default 1,32,64)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured wrk run (default 10)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up before each run (default 3)")
    parser.add_argument("--ttft-requests", type=int, default=300, help="streamed requests timed (default 300)")
    parser.add_argument("--ttft-warmup", type=int, default=30, help="streamed requests before timing (default 30)")
    parser.add_argument("--no-ttft", action="store_true", help="skip the time-to-first-token measurement")
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternating gateway/Portkey rounds for the throughput goal (default 5; 0 skips)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 s runs, 1 s warm-ups, 100 TTFT requests")
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default bench/results/perf-<ts>.json)")
    args = parser.parse_args(argv)
    rows = _split(args.rows)
    unknown = sorted(set(rows) - set(keys))
    peers = [] if args.no_peers else _split(args.peers)
    bad_peers = sorted(set(peers) - set(PEER_NAMES))
    if unknown or bad_peers:
        parser.error(f"unknown rows {unknown} (known: {keys})" if unknown else f"unknown peers {bad_peers}")
    try:
        connections = sorted({int(c) for c in _split(args.connections)})
    except ValueError:
        parser.error("--connections must be a comma list of integers")
    if not connections or min(connections) < 1 or args.workers < 1:
        parser.error("connections and --workers must be >= 1")
    duration, warmup = (3.0, 1.0) if args.quick else (args.duration, args.warmup)
    requests, ttft_warmup = (100, 10) if args.quick else (args.ttft_requests, args.ttft_warmup)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Options(rows=rows, peers=peers, workers=args.workers, connections=connections, duration_s=duration,
                   warmup_s=warmup, ttft_requests=0 if args.no_ttft else requests, ttft_warmup=ttft_warmup,
                   rounds=1 if args.quick and args.rounds else max(0, args.rounds),
                   out=args.out or REPO / "bench" / "results" / f"perf-{stamp}.json")


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Bench:
    """One benchmark run: owns the temp dir, the processes and the rows measured so far."""

    def __init__(self, opts: Options, registry: Registry, tmp: Path) -> None:
        self.opts, self.registry, self.tmp = opts, registry, tmp
        self.databases = gateway_proc.Databases()
        self.rows: list[Row] = []
        self.ttft: dict[str, Any] = {}
        self.head_to_head: dict[str, Any] = {}
        self.versions: dict[str, str] = {"gateway": harness.package_version("gateway"), "nginx": nginx.version(),
                                         "wrk": wrk.version(), "python": sys.version.split()[0]}
        self.upstream = ""

    # -- the run -----------------------------------------------------------------------------------------
    def run(self) -> None:
        _, self.upstream = nginx.start(self.registry, self.tmp / "nginx")
        nginx_pid = self.registry.children[-1].pid
        self.direct_rows(nginx_pid)
        for scenario in all_scenarios():
            if scenario.key in self.opts.rows:
                self.gateway_row(scenario)
        for name in self.opts.peers:
            self.peer_row(name)
        if self.opts.rounds and "gateway" in self.opts.rows and "portkey" in self.opts.peers:
            self.measure_head_to_head()
        if self.opts.ttft_requests:
            self.measure_ttft()

    def direct_rows(self, nginx_pid: int) -> None:
        body = request_body(model=nginx.MODEL)
        self.rows.append(self.measure(Row(DIRECT, "mock"), self.upstream + "/v1/chat/completions", body, {},
                                      nginx_pid))
        if any(s.stream for s in all_scenarios() if s.key in self.opts.rows):
            url = self.upstream + nginx.STREAM_PREFIX + "/v1/chat/completions"
            stream_body = request_body(model=nginx.MODEL, stream=True)
            self.rows.append(self.measure(Row(DIRECT_STREAM, "mock"), url, stream_body, {}, nginx_pid))

    def gateway_row(self, scenario: Scenario) -> None:
        workers = self.opts.workers if scenario.multi_worker else 1
        row = Row(scenario.label(workers), "gateway", DIRECT_STREAM if scenario.stream else DIRECT)
        self.rows.append(row)
        problem = (gateway_proc.redis_problem() if scenario.state == "redis" else None) or (
            gateway_proc.postgres_problem() if scenario.ledger == "postgresql" else None)
        if problem:
            row.skipped = problem
            log(f"skipping '{row.name}': {problem}")
            return
        upstream_v1 = self.upstream + (nginx.STREAM_PREFIX if scenario.stream else "") + "/v1"
        root = self.tmp / f"gateway-{scenario.key}"
        gateway = None
        try:
            gateway = gateway_proc.start(self.registry, root, scenario, upstream_v1, workers, self.databases)
            body = deep_merge(request_body(stream=scenario.stream), scenario.body)
            self.measure(row, gateway.url + "/v1/chat/completions", body, {**gateway.headers, **scenario.headers},
                         gateway.child.pid)
        except BenchError as e:
            row.skipped = f"failed: {e}"
            log(f"'{row.name}' failed: {e}")
        finally:
            self.stop_gateway(row, root, gateway)

    def stop_gateway(self, row: Row, root: Path, gateway: gateway_proc.Gateway | None) -> None:
        if gateway is not None:
            self.registry.stop(gateway.child)
            if row.errors:
                log(f"'{row.name}' had {row.errors} errors; gateway log (non-access lines):\n"
                    f"{gateway_proc.log_problems(gateway.child.log)}")
            if gateway.database:
                self.databases.drop(gateway.database)
        # Each scenario's access log can reach hundreds of MB; the run keeps only what it reports.
        shutil.rmtree(root, ignore_errors=True)

    def peer_row(self, name: str) -> None:
        try:
            peer = load_peer(name)
        except Exception as e:  # a broken peer module skips its row only
            self.rows.append(Row(name, "peer", DIRECT, skipped=f"cannot load bench/perf/peers/{name}.py: {e}"))
            log(f"skipping {name}: {e}")
            return
        row = Row(str(peer.NAME), "peer", DIRECT)
        self.rows.append(row)
        try:
            log(f"installing {peer.NAME} under {PEER_ROOT} (once; later runs reuse it)")
            self.versions[name] = str(peer.install(PEER_ROOT))
        except Exception as e:  # an install can fail any way: skip the row, go on
            row.skipped = f"install failed: {e}"
            log(f"skipping '{row.name}': {row.skipped}")
            return
        child = None
        try:
            port = harness.free_port()
            log_path = self.tmp / f"peer-{name}.log"
            popen = peer.start(PEER_ROOT, self.upstream, port, log_path)
            child = self.registry.adopt(str(peer.NAME), popen, log_path)
            url = f"http://127.0.0.1:{port}{peer.PATH}"
            headers = peer_headers(peer, self.upstream)
            body = request_body(model=str(peer.MODEL))
            gateway_proc.wait_ok(child, url, body, headers, PEER_START_TIMEOUT_S)
            self.measure(row, url, body, headers, child.pid)
        except BenchError as e:
            row.skipped = f"failed: {e}"
            log(f"'{row.name}' failed: {e}")
        finally:
            if child is not None:
                self.registry.stop(child)
                if row.errors:
                    log(f"'{row.name}' had {row.errors} errors; log tail:\n{child.tail(8)}")

    def measure(self, row: Row, url: str, body: dict[str, Any], headers: dict[str, str], pid: int) -> Row:
        """wrk at each connection count (warm-up, then the measured run); CPU over the 32-connection run."""
        script = wrk.lua_script(self.tmp / "request.lua", body, headers)
        cpu_at = CPU_CONNECTIONS if CPU_CONNECTIONS in self.opts.connections else max(self.opts.connections)
        log(f"measuring '{row.name}'")
        for conns in self.opts.connections:
            wrk.run(self.registry, url, script, conns, self.opts.warmup_s, self.tmp)
            if conns == cpu_at:
                with harness.cpu_meter(pid) as cpu:
                    result = wrk.run(self.registry, url, script, conns, self.opts.duration_s, self.tmp)
                row.cpu_pct, row.cpu_connections = cpu(), conns
            else:
                result = wrk.run(self.registry, url, script, conns, self.opts.duration_s, self.tmp)
            row.runs[conns] = result
            log(f"  @{conns}: {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms"
                + (f", {result.non_2xx} non-2xx, {result.socket_errors} socket errors" if result.errors else ""))
        row.rss_mb, row.rss_each_mb = harness.tree_rss_mb(pid)
        return row

    def measure_head_to_head(self) -> None:
        """The throughput goal's ratio from alternating runs: the default gateway and Portkey both up,
        measured in turn at 32 connections, `rounds` times. The machine's speed drifts by 10-30 % over
        minutes, so two rows measured minutes apart can differ by that much on their own; the median
        of ratios from adjacent runs does not carry that drift."""
        peer = load_peer("portkey")
        scenario = next(s for s in all_scenarios() if s.key == "gateway")
        root = self.tmp / "head-to-head"
        gateway = child = None
        try:
            gateway = gateway_proc.start(self.registry, root, scenario, self.upstream + "/v1", 1, self.databases)
            port = harness.free_port()
            log_path = self.tmp / "head-to-head-portkey.log"
            child = self.registry.adopt(str(peer.NAME), peer.start(PEER_ROOT, self.upstream, port, log_path),
                                        log_path)
            peer_url, peer_headers_ = f"http://127.0.0.1:{port}{peer.PATH}", peer_headers(peer, self.upstream)
            peer_body = request_body(model=str(peer.MODEL))
            gateway_proc.wait_ok(child, peer_url, peer_body, peer_headers_, PEER_START_TIMEOUT_S)
            targets = [
                ("gateway", gateway.url + "/v1/chat/completions",
                 wrk.lua_script(root / "h2h-gateway.lua", request_body(), gateway.headers)),
                ("portkey", peer_url, wrk.lua_script(root / "h2h-portkey.lua", peer_body, peer_headers_)),
            ]
            log(f"head to head: default gateway and Portkey in turn @{CPU_CONNECTIONS}, {self.opts.rounds} rounds")
            for _, url, script in targets:  # both fully warm (Node's JIT included) before the first round
                wrk.run(self.registry, url, script, CPU_CONNECTIONS, self.opts.duration_s, self.tmp)
            rounds: list[dict[str, float]] = []
            for _ in range(self.opts.rounds):
                measured: dict[str, float] = {}
                for name, url, script in targets:
                    wrk.run(self.registry, url, script, CPU_CONNECTIONS, self.opts.warmup_s, self.tmp)
                    result = wrk.run(self.registry, url, script, CPU_CONNECTIONS, self.opts.duration_s, self.tmp)
                    if result.errors:
                        raise BenchError(f"{name}: {result.errors} errors in a head-to-head run")
                    measured[name] = result.rps
                measured["ratio"] = measured["gateway"] / measured["portkey"] if measured["portkey"] else 0.0
                rounds.append(measured)
                log(f"  gateway {measured['gateway']:,.0f} req/s, Portkey {measured['portkey']:,.0f} req/s: "
                    f"{measured['ratio']:.2f} x")
            self.head_to_head = {"connections": CPU_CONNECTIONS, "rounds": rounds,
                                 "median_ratio": statistics.median(r["ratio"] for r in rounds)}
        except BenchError as e:
            self.head_to_head = {"error": str(e)}
            log(f"head to head failed: {e}")
        finally:
            for started in (child, gateway.child if gateway else None):
                if started is not None:
                    self.registry.stop(started)
            if gateway is not None and gateway.database:
                self.databases.drop(gateway.database)
            shutil.rmtree(root, ignore_errors=True)

    def measure_ttft(self) -> None:
        """TTFT over `gateway mock-upstream --latency-ms 20 --chunk-delay-ms 2`: directly, then through the gateway."""
        root = self.tmp / "ttft"
        root.mkdir()
        exe = Path(sys.executable).with_name("gateway")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "gateway"]
        mock = self.registry.spawn("mock-upstream", [*cmd, "mock-upstream", "--port", "0", "--latency-ms", "20",
                                                     "--chunk-delay-ms", "2"], root / "mock.log")
        gateway = None
        try:
            mock_url = harness.wait_for_line(mock, r"mock-upstream listening on (?P<url>http://\S+)", 60).group("url")
            log(f"measuring time to first token ({self.opts.ttft_requests} streamed requests each)")
            direct_body = {**request_body(model=gateway_proc.MODEL, stream=True),
                           "stream_options": {"include_usage": True}}  # what the gateway asks the upstream for
            direct = ttft.measure(mock_url + "/v1/chat/completions", direct_body, {"Authorization": "Bearer x"},
                                  self.opts.ttft_requests, self.opts.ttft_warmup)
            stream = next(s for s in all_scenarios() if s.key == "stream")
            gateway = gateway_proc.start(self.registry, root / "gateway", stream, mock_url + "/v1", 1, self.databases)
            through = ttft.measure(gateway.url + "/v1/chat/completions", request_body(stream=True), gateway.headers,
                                   self.opts.ttft_requests, self.opts.ttft_warmup)
            self.ttft = {"mock": "gateway mock-upstream --latency-ms 20 --chunk-delay-ms 2",
                         "direct": direct.as_dict(), "gateway": through.as_dict(),
                         "added_p50_ms": through.p50_ms - direct.p50_ms}
        except BenchError as e:
            self.ttft = {"error": str(e)}
            log(f"TTFT failed: {e}")
        finally:
            if gateway is not None:
                self.registry.stop(gateway.child)
            self.registry.stop(mock)


def load_peer(name: str) -> ModuleType:
    """bench/perf/peers/<name>.py, imported by path (the directory is not a package)."""
    spec = importlib.util.spec_from_file_location(f"perf_peer_{name}", HERE / "peers" / f"{name}.py")
    if spec is None or spec.loader is None:
        raise BenchError(f"cannot load peer {name}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peer_headers(peer: ModuleType, upstream: str) -> dict[str, str]:
    # LiteLLM's headers() takes nothing; Portkey's takes the upstream URL (its custom host depends on it).
    params = inspect.signature(peer.headers).parameters
    return dict(peer.headers(upstream) if params else peer.headers())


# -- report ---------------------------------------------------------------------------------------------
def _ms(value: float) -> str:
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def _added(value: float) -> str:
    return ("+" if value >= 0 else "") + _ms(value)


def added(rows: list[Row], row: Row, conns: int) -> tuple[float, float] | None:
    """(p50, p99) of row minus its direct baseline's at the same connection count."""
    base = next((r for r in rows if r.name == row.baseline), None)
    if base is None or conns not in base.runs or conns not in row.runs:
        return None
    return row.runs[conns].p50_ms - base.runs[conns].p50_ms, row.runs[conns].p99_ms - base.runs[conns].p99_ms


def table(rows: list[Row], connections: list[int]) -> str:
    low, rest = connections[0], connections[1:]
    head = [f"req/s @{low}", f"p50 @{low}", f"added p50 @{low}", f"p99 @{low}", f"added p99 @{low}"]
    for c in rest:
        head += [f"req/s @{c}", f"p99 @{c}"]
    head += ["RSS MB", f"CPU % @{CPU_CONNECTIONS if CPU_CONNECTIONS in connections else connections[-1]}", "errors"]
    lines = ["| row | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
    for row in rows:
        lines.append(f"| {row.name}{' (!)' if row.errors else ''} | " + " | ".join(_cells(rows, row, low, rest))
                     + " |")
    return "\n".join(lines)


def _cells(rows: list[Row], row: Row, low: int, rest: list[int]) -> list[str]:
    width = 5 + 2 * len(rest) + 3
    if row.skipped or not row.runs:
        return ["skipped" if row.skipped else "not run", *[""] * (width - 1)]
    cells = ["", "", "", "", ""]  # an interrupted row lacks its later runs: those cells stay empty
    if low in row.runs:
        first, diff = row.runs[low], added(rows, row, low)
        cells = [f"{first.rps:,.0f}", _ms(first.p50_ms), _added(diff[0]) if diff else "", _ms(first.p99_ms),
                 _added(diff[1]) if diff else ""]
    for c in rest:
        cells += [f"{row.runs[c].rps:,.0f}", _ms(row.runs[c].p99_ms)] if c in row.runs else ["", ""]
    rss = f"{row.rss_mb:.1f}" + (f" ({len(row.rss_each_mb)} procs)" if len(row.rss_each_mb) > 1 else "")
    cells += [rss if row.rss_each_mb else "", "" if row.cpu_pct is None else f"{row.cpu_pct:.0f}", str(row.errors)]
    return cells


def goals(rows: list[Row], ttft_result: dict[str, Any],
          head_to_head: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The issue's goals, each with the measured value and whether it is met (None: not measured this run)."""
    by_name = {r.name: r for r in rows if r.runs and not r.skipped}
    default = next((r for r in by_name.values() if r.name.startswith("gateway: default (")), None)
    redis = by_name.get("gateway: redis state")
    out: list[dict[str, Any]] = []

    def goal(text: str, value: float | None, limit: float, higher_is_better: bool, unit: str) -> None:
        met = None if value is None else (value >= limit if higher_is_better else value < limit)
        out.append({"goal": text, "value": value, "limit": limit, "unit": unit, "met": met})

    for peer, limit in (("Portkey", 3.0), ("LiteLLM", 20.0)):
        if peer == "Portkey" and head_to_head and "median_ratio" in head_to_head:
            goal(f"req/s @32, gateway default / {peer} (median of {len(head_to_head['rounds'])} alternating rounds)",
                 head_to_head["median_ratio"], limit, True, "x")
            continue
        other = by_name.get(peer)
        ratio = None
        if default and other and 32 in default.runs and 32 in other.runs and other.runs[32].rps > 0:
            ratio = default.runs[32].rps / other.runs[32].rps
        goal(f"req/s @32, gateway default / {peer}", ratio, limit, True, "x")
    diff = added(rows, default, 1) if default else None
    goal("added latency @1, default, p50", diff[0] if diff else None, 0.6, False, "ms")
    goal("added latency @1, default, p99", diff[1] if diff else None, 2.0, False, "ms")
    redis_diff = added(rows, redis, 1) if redis else None
    goal("added latency @1, redis state, p50", redis_diff[0] if redis_diff else None, 1.0, False, "ms")
    goal("streaming: TTFT added p50", ttft_result.get("added_p50_ms"), 1.0, False, "ms")
    rss = default.rss_mb if default and default.rss_each_mb else None  # an interrupted row has no RSS reading
    goal("RSS per worker, default (1 worker)", rss, 120.0, False, "MB")
    return out


def report(bench: Bench, started: datetime, interrupted: bool) -> dict[str, Any]:
    rows, opts = bench.rows, bench.opts
    if interrupted:
        print("INTERRUPTED: partial results (rows and runs not reached are empty)\n")
    print(table(rows, opts.connections))
    notes = [f"- {row.name}: {row.skipped}" for row in rows if row.skipped]
    notes += [f"- (!) {row.name}: errors (" + ", ".join(
        f"@{c}: {r.non_2xx} non-2xx, {r.socket_errors} socket" for c, r in row.runs.items() if r.errors) + ")"
        for row in rows if row.errors and not row.skipped]
    print("\n" + "\n".join(notes) + "\n" if notes else "")
    t = bench.ttft
    if "direct" in t:
        d, g = t["direct"], t["gateway"]
        print(f"TTFT ({t['mock']}, 1 connection, {d['requests']} requests):")
        print(f"- mock direct:      p50 {d['p50_ms']:.2f} ms, p99 {d['p99_ms']:.2f} ms, errors {d['errors']}")
        print(f"- through gateway:  p50 {g['p50_ms']:.2f} ms, p99 {g['p99_ms']:.2f} ms, errors {g['errors']}")
        print(f"- added p50: {_added(t['added_p50_ms'])} ms")
    elif "error" in t:
        print(f"TTFT: failed: {t['error']}")
    h2h = bench.head_to_head
    if "rounds" in h2h:
        print(("\n" if t else "") + f"Head to head (@{h2h['connections']}, the default gateway and Portkey measured "
              "in turn):")
        for i, r in enumerate(h2h["rounds"], 1):
            print(f"- round {i}: gateway {r['gateway']:,.0f} req/s, Portkey {r['portkey']:,.0f} req/s: "
                  f"{r['ratio']:.2f} x")
        print(f"- median: {h2h['median_ratio']:.2f} x")
    elif "error" in h2h:
        print(f"Head to head: failed: {h2h['error']}")
    results = goals(rows, t, h2h)
    print(("\n" if t or h2h else "") + "Goals (this run, this machine, 1 worker, full default pipeline):")
    for g in results:
        value = "not measured" if g["value"] is None else f"{g['value']:.2f} {g['unit']}"
        verdict = {True: "met", False: "MISSED", None: "-"}[g["met"]]
        sign = ">=" if g["unit"] == "x" else "<"
        print(f"- {g['goal']}: {value} (goal {sign} {g['limit']:g} {g['unit']}): {verdict}")
    info = harness.machine()
    print(f"\nDate: {started.strftime('%Y-%m-%d %H:%M:%S UTC')}; machine: {info['nproc']} CPUs, {info['cpu']}, "
          f"Linux {info['kernel']}")
    print("Versions: " + ", ".join(f"{k} {v}" for k, v in bench.versions.items()))
    print(f"wrk -t1, {opts.duration_s:g} s per run after {opts.warmup_s:g} s warm-up; latency added = row minus "
          f"'{DIRECT}' (streaming rows: '{DIRECT_STREAM}') at the same connection count")
    return {"date": started.isoformat(), "machine": info, "versions": bench.versions,
            "options": {"rows": opts.rows, "peers": opts.peers, "workers": opts.workers,
                        "connections": opts.connections, "duration_s": opts.duration_s, "warmup_s": opts.warmup_s},
            "rows": [r.as_dict() for r in rows], "ttft": t, "head_to_head": h2h, "goals": results}


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    harness.ensure_tools()
    started = datetime.now(UTC)
    registry = Registry()
    tmp = Path(tempfile.mkdtemp(prefix="gateway-perf-"))
    bench = Bench(opts, registry, tmp)
    interrupted = False
    began = time.monotonic()
    with harness.signals_raise():
        try:
            bench.run()
        except (KeyboardInterrupt, SystemExit):
            interrupted = True
            log("interrupted: stopping everything this run started")
        finally:
            with harness.signals_ignored():
                registry.stop_all()
                bench.databases.drop_all()
                shutil.rmtree(tmp, ignore_errors=True)
    data = report(bench, started, interrupted)
    data["elapsed_s"] = round(time.monotonic() - began, 1)
    data["interrupted"] = interrupted
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nJSON: {opts.out.relative_to(REPO) if opts.out.is_relative_to(REPO) else opts.out}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
