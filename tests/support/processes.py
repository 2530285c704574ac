"""Real server processes for tests: start, wait until ready, read their output, stop.

A process announces readiness with one stdout line matching a pattern with a named group `url`.
Its stdout and stderr are drained by background threads into one buffer from the start, so a
chatty process never blocks on a full pipe and a failure can show everything it printed.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import IO, Any

MOCK_UPSTREAM_READY = r"mock-upstream listening on (?P<url>http://\S+)"

# The one place that says how the mock upstream is launched.
MOCK_UPSTREAM_ARGS = [sys.executable, "-m", "gateway", "mock-upstream"]


class ProcessFailed(RuntimeError):
    pass


class RunningProcess:
    def __init__(self, proc: subprocess.Popen[str], args: list[str], ready: re.Pattern[str]) -> None:
        self.proc = proc
        self.args = args
        self.url = ""
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._pattern = ready
        self._threads = [threading.Thread(target=self._drain, args=(stream,), daemon=True)
                         for stream in (proc.stdout, proc.stderr) if stream is not None]

    def _drain(self, stream: IO[str]) -> None:
        for line in iter(stream.readline, ""):
            with self._lock:
                self._lines.append(line)
            if not self._ready.is_set() and stream is self.proc.stdout:
                match = self._pattern.search(line)
                if match:
                    self.url = match.group("url").rstrip("/")
                    self._ready.set()
        stream.close()

    def output(self) -> str:
        """Everything the process printed so far, stdout and stderr interleaved by arrival."""
        with self._lock:
            return "".join(self._lines)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM, wait up to `timeout`, then SIGKILL; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        for thread in self._threads:
            thread.join(timeout=2)
        return self.proc.returncode

    def __enter__(self) -> RunningProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RunningProcess(pid={self.proc.pid}, url={self.url!r})"


def start_process(args: list[str], ready_pattern: str, env: Mapping[str, str | None] | None = None,
                  timeout: float = 20) -> RunningProcess:
    """Start `args` and return once stdout shows `ready_pattern` (a regex with a group `url`).

    `env` is laid over the current environment; a None value removes that variable. Raises
    ProcessFailed, with the process output, if the process exits or is not ready within
    `timeout` seconds (it is stopped first).
    """
    pattern = re.compile(ready_pattern)
    if "url" not in pattern.groupindex:
        raise ValueError("ready_pattern needs a named group 'url'")
    merged: dict[str, str | None] = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                            env={k: v for k, v in merged.items() if v is not None})
    running = RunningProcess(proc, args, pattern)
    for thread in running._threads:
        thread.start()
    deadline = time.monotonic() + timeout
    while not running._ready.wait(0.05):
        if proc.poll() is not None or time.monotonic() > deadline:
            exited = proc.poll() is not None
            running.stop()
            what = f"exited with code {proc.returncode}" if exited else f"was not ready within {timeout}s"
            raise ProcessFailed(f"{' '.join(args)} {what}; output:\n{running.output()}")
    return running


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (prefer `--port 0` where the server supports it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def start_mock_upstream(*flags: str, env: Mapping[str, str | None] | None = None,
                        timeout: float = 20) -> RunningProcess:
    """A real mock upstream on a free port; `flags` are `gateway mock-upstream` options."""
    return start_process([*MOCK_UPSTREAM_ARGS, "--port", "0", *flags], MOCK_UPSTREAM_READY, env=env,
                         timeout=timeout)
