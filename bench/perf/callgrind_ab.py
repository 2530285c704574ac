"""Instructions per request of the default pipeline, by thread, for one or more checkouts (A/B): deterministic where
wall-clock throughput on a shared 2-core machine is not.

    .venv/bin/python bench/perf/callgrind_ab.py                       # this checkout
    .venv/bin/python bench/perf/callgrind_ab.py ../gateway-901fa21 .   # A/B: each path a checkout with its own .venv
    .venv/bin/python bench/perf/callgrind_ab.py . --rounds 2 --keep   # keep the callgrind files (callgrind_annotate)

Each checkout's `gateway serve` (the default config of bench/perf: memory state with limits, SQLite ledger, one
worker) runs under `valgrind --tool=callgrind --separate-threads=yes` against nginx's fixed completion. The request
is the bench's own (bench/perf/scenarios.py). After `--warmup` requests the counters are zeroed
(`callgrind_control -z`); after `--requests` more on `--connections` keep-alive connections they are dumped
(`callgrind_control -d`), one file per thread. Printed: instructions per request for the event-loop thread (thread
1: the bottleneck at 32 connections) and for every other thread, labelled by what it runs.

Under callgrind the gateway runs ~50x slower, so work driven by the clock (a 20 ms journal commit timer, the fsync
thread's wake-ups, the 10 ms deadline sweep) is spread over ~50x fewer requests than at full speed: a request then
costs a whole journal commit (one per request above 20 ms a request) and a share of a ledger batch (the writer waits
up to 200 ms for one), so those per-request figures overstate what the commit and batch cost at 4,000 requests/s,
and they move with the machine's load (a slower run has fewer requests per batch). `--pace-ms 60` starts requests
60 ms apart: one commit per request and one batch per 3-4 requests whatever the load, so A/B readings repeat;
`--config '{"storage": {"journal_commit_ms": 1000}}'` spreads the commits instead (the difference to a default run
is what commits cost). Rounds alternate between the checkouts.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nginx
from gateway_proc import READY, write_config
from harness import BenchError, Registry, wait_for_line
from scenarios import BASE, Scenario, deep_merge, request_body

START_TIMEOUT_S = 600.0  # imports under callgrind take a minute or more on a loaded machine
# A thread is named by the C symbols only it runs (callgrind sees the interpreter, not Python frames).
LABELS = (("sqlite3_step", "ledger writer (SQLite)"), ("fdatasync", "journal fsync"), ("fsync", "journal fsync"),
          ("epoll_wait", "event loop"))


def post(conn: http.client.HTTPConnection, body: bytes, headers: dict[str, str]) -> None:
    conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        raise BenchError(f"HTTP {response.status}: {data[:300]!r}")


def drive(port: int, key: str, total: int, connections: int, pace_s: float = 0.0) -> None:
    """total requests over `connections` keep-alive connections, each connection sequential, a request
    starting at least pace_s after the connection's previous one began."""
    body = json.dumps(request_body()).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    shares = [total // connections + (1 if i < total % connections else 0) for i in range(connections)]
    errors: list[BaseException] = []

    def run(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            for _ in range(n):
                began = time.monotonic()
                post(conn, body, headers)
                if pace_s:
                    time.sleep(max(0.0, began + pace_s - time.monotonic()))
        except BaseException as e:  # reported by the caller
            errors.append(e)
        finally:
            conn.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in shares if n]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise BenchError(f"request failed: {errors[0]!r}")


def callgrind_control(pid: int, flag: str) -> None:
    done = subprocess.run(["callgrind_control", flag, str(pid)], capture_output=True, text=True, timeout=120,
                          check=False)
    if done.returncode != 0:
        raise BenchError(f"callgrind_control {flag} failed: {done.stdout} {done.stderr}")


def thread_totals(files: list[Path]) -> list[tuple[int, int, str]]:
    """(thread number, instructions, label) per dump file."""
    out = []
    for f in files:
        text = f.read_text(errors="replace")
        thread = int(re.search(r"^thread: (\d+)", text, re.M).group(1))  # type: ignore[union-attr]
        total = re.search(r"^(?:totals|summary): (\d+)", text, re.M)
        label = next((name for symbol, name in LABELS if re.search(rf"^c?fn=\(\d+\) {symbol}\b", text, re.M)),
                     "other (log writer, pools)")
        if thread == 1:
            label = "event loop"
        out.append((thread, int(total.group(1)) if total else 0, label))
    return sorted(out)


def measure(checkout: Path, upstream: str, args: argparse.Namespace, keep_dir: Path | None,
            tag: str) -> list[tuple[int, int, str]]:
    python = checkout / ".venv" / "bin" / "python"
    if not python.exists():
        raise BenchError(f"{python} missing: make the checkout's venv first")
    registry = Registry()
    with tempfile.TemporaryDirectory(prefix="gw-callgrind-") as tmp:
        root = Path(tmp)
        scenario = Scenario(BASE[0].key, BASE[0].name, config=deep_merge(BASE[0].config, args.config))
        config = write_config(root, scenario, upstream + "/v1", "sqlite:///../ledger.db", workers=1)
        key = "sk-bench-callgrind-0123456789abcdef"
        env = {**os.environ, "UP_KEY": "x", "BENCH_KEY": key, "PYTHONUNBUFFERED": "1"}
        env.pop("GATEWAY_CONFIG", None)
        out = root / "callgrind.out"
        cmd = ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}",
               f"--log-file={root / 'valgrind.log'}", str(python), "-m", "gateway", "serve", "--config", str(config)]
        child = registry.spawn(f"gateway ({checkout})", cmd, root / "gateway.log", env=env, cwd=checkout)
        try:
            url = wait_for_line(child, READY, START_TIMEOUT_S).group("url")
            port = int(url.rstrip("/").rsplit(":", 1)[1])
            drive(port, key, args.warmup, args.connections, args.pace_ms / 1000)
            callgrind_control(child.pid, "-z")
            drive(port, key, args.requests, args.connections, args.pace_ms / 1000)
            callgrind_control(child.pid, "-d")
            files = sorted(root.glob("callgrind.out*-*"))
            if not files:
                raise BenchError(f"no dump files in {root}: {sorted(p.name for p in root.iterdir())}")
            totals = thread_totals(files)
            if keep_dir is not None:
                keep_dir.mkdir(parents=True, exist_ok=True)
                for f in files:
                    shutil.copy(f, keep_dir / f"{tag}.{f.name.rsplit('-', 1)[1]}")
        finally:
            registry.stop_all()
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs="*", type=Path, default=[Path(".")])
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--pace-ms", type=float, default=0.0,
                        help="start a connection's requests at least this far apart (see the module doc)")
    parser.add_argument("--config", type=json.loads, default={},
                        help="JSON deep-merged into config/gateway.yaml (see the module doc)")
    parser.add_argument("--keep", type=Path, default=None, help="copy the dump files here (NAME.<thread>)")
    args = parser.parse_args()
    registry = Registry()
    results: dict[str, list[list[tuple[int, int, str]]]] = {}
    with tempfile.TemporaryDirectory(prefix="gw-callgrind-nginx-") as tmp:
        _, upstream = nginx.start(registry, Path(tmp))
        try:
            for r in range(args.rounds):
                for i, checkout in enumerate(args.checkouts):
                    name = str(checkout.resolve())
                    totals = measure(checkout.resolve(), upstream, args, args.keep, f"{i}-{r}")
                    results.setdefault(name, []).append(totals)
                    loop = next(n for t, n, _ in totals if t == 1)
                    rest = "; ".join(f"t{t} {label} {n / args.requests / 1000:,.1f}k" for t, n, label in totals
                                     if t != 1)
                    print(f"{time.strftime('%H:%M:%S')} round {r + 1} {name}: event loop "
                          f"{loop / args.requests / 1000:,.1f}k instructions/request; {rest}", flush=True)
        finally:
            registry.stop_all()
    for name, rounds in results.items():
        loops = [next(n for t, n, _ in totals if t == 1) / args.requests / 1000 for totals in rounds]
        others = [sum(n for t, n, _ in totals if t != 1) / args.requests / 1000 for totals in rounds]
        print(f"{name}: event loop {', '.join(f'{x:,.1f}k' for x in loops)}; other threads "
              f"{', '.join(f'{x:,.1f}k' for x in others)} (instructions/request)")


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        sys.exit(f"callgrind_ab: {e}")
