"""Process bookkeeping for the perf bench: start children in their own process group, measure their tree from
/proc, and stop every one of them by PID (process group) however the run ends.

Nothing here kills by name: another benchmark may be running on the same machine.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[2]
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")
STOP_GRACE_S = 10.0


class BenchError(RuntimeError):
    """A component could not be started or measured; the message says which and why."""


@dataclass
class Child:
    """One started process (the leader of its own process group) and the file its output goes to."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Registry:
    """Every child this run started, so cleanup can stop exactly those (and their descendants)."""

    children: list[Child] = field(default_factory=list)

    def spawn(self, name: str, args: list[str], log: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> Child:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            # A new session makes the child a process-group leader: killpg then reaches its workers too,
            # and a Ctrl-C in the terminal reaches only us, so we decide the stop order.
            popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=cwd, start_new_session=True)
        return self.adopt(name, popen, log)

    def adopt(self, name: str, popen: subprocess.Popen[bytes], log: Path) -> Child:
        """Track a process someone else started (the peers' start() functions), which must lead its own group."""
        child = Child(name, popen, log)
        self.children.append(child)
        return child

    def stop(self, child: Child) -> None:
        stop_group(child.popen)
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        # Newest first: a gateway goes before the upstream it talks to, so it does not log upstream errors.
        for child in reversed(list(self.children)):
            self.stop(child)


def stop_group(popen: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group led by popen, wait, then SIGKILL what is left of the group."""
    pgid = popen.pid
    tree = descendants(pgid)
    _signal_group(pgid, signal.SIGTERM)
    try:
        popen.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    # Also the leader's group after it exited: a worker that outlives its supervisor must not stay behind.
    _signal_group(pgid, signal.SIGKILL)
    if popen.poll() is None:
        popen.wait(STOP_GRACE_S)
    # Descendants that left the group (setsid) are stopped by the PIDs recorded before the stop.
    for pid in tree:
        if pid != pgid and _exists(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    # Only while a process is still in the group: Linux does not reuse a PID that is some group's ID, so the group
    # is still ours then, even after its leader was reaped.
    if not _group_alive(pgid):
        return
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read_stat(int(entry))
            # After the name: state(0) ppid(1) pgrp(2).
            if stat is not None and int(stat[2]) == pgid:
                return True
    return False


def _exists(pid: int) -> bool:
    stat = _read_stat(pid)
    return stat is not None and stat[0] != "Z"


@contextmanager
def signals_raise() -> Iterator[None]:
    """Turn SIGTERM (and SIGHUP) into SystemExit so `finally` blocks run; SIGINT already raises KeyboardInterrupt."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def signals_ignored() -> Iterator[None]:
    """Hold off Ctrl-C and SIGTERM while cleaning up: a second Ctrl-C must not leave half the children running."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# -- /proc measurements -------------------------------------------------------------------------------
def _read_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may contain spaces and parentheses)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def descendants(root: int) -> list[int]:
    """root and every process below it, found from the parent PIDs in /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read_stat(int(entry))
            if stat is not None:
                parents.setdefault(int(stat[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, []))
    return tree


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mb(root: int) -> tuple[float, list[float]]:
    """Total VmRSS of root's tree in MB, and each process's (for the per-worker figure)."""
    each = [rss_kb(pid) / 1024 for pid in descendants(root)]
    each = [mb for mb in each if mb > 0]
    return sum(each), each


def tree_cpu_ticks(root: int) -> int:
    """utime+stime of the tree, plus cutime+cstime (children it already reaped), in clock ticks."""
    total = 0
    for pid in descendants(root):
        stat = _read_stat(pid)
        if stat is not None:
            # After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
            total += sum(int(v) for v in stat[11:15])
    return total


@contextmanager
def cpu_meter(root: int) -> Iterator[Callable[[], float]]:
    """Yields a function that returns the tree's CPU % (100 = one core) over the block's wall time."""
    start_ticks, start = tree_cpu_ticks(root), time.monotonic()
    result: list[float] = []
    yield lambda: result[0] if result else 0.0
    elapsed = time.monotonic() - start
    used = (tree_cpu_ticks(root) - start_ticks) / CLK_TCK
    result.append(100.0 * used / elapsed if elapsed > 0 else 0.0)


# -- small utilities ----------------------------------------------------------------------------------
def free_port() -> int:
    """A port free right now; only for programs that cannot pick their own (nginx, the peers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_line(child: Child, pattern: str, timeout: float) -> re.Match[str]:
    """Poll the child's log for its ready line (no reader thread needed); fail fast when it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, child.log.read_text(errors="replace"))
        if match:
            return match
        if not child.alive():
            break
        time.sleep(0.05)
    raise BenchError(f"{child.name} did not start (exit code {child.popen.poll()}); log tail:\n{child.tail()}")


def tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def command_output(args: list[str]) -> str:
    """stdout+stderr of a short command, or '' when it cannot run (used for version strings)."""
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).strip()


def ensure_tools(tools: tuple[str, ...] = ("nginx", "wrk")) -> None:
    """Install nginx and wrk from Debian when missing (root only); otherwise exit with the command to run."""
    missing = [t for t in tools if _which(t) is None]
    if not missing:
        return
    command = ["apt-get", "install", "-y", *missing]
    if os.geteuid() != 0:
        sys.exit(f"bench: {', '.join(missing)} missing; install with: sudo {' '.join(command)}")
    print(f"installing {', '.join(missing)}: {' '.join(command)}", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(command, env=env, check=False).returncode != 0:
        # A fresh container has no package lists yet: update once, then retry.
        subprocess.run(["apt-get", "update"], env=env, check=False)
        if subprocess.run(command, env=env, check=False).returncode != 0:
            sys.exit(f"bench: could not install {', '.join(missing)} ({' '.join(command)} failed)")
    still = [t for t in tools if _which(t) is None]
    if still:
        sys.exit(f"bench: {', '.join(still)} still missing after apt-get install")


def _which(tool: str) -> str | None:
    # nginx lives in /usr/sbin, which a non-login root shell may not have on PATH.
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin")


def tool_path(tool: str) -> str:
    path = _which(tool)
    if path is None:
        raise BenchError(f"{tool} not found")
    return path


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def machine() -> dict[str, str | int]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count() or 0, "cpu": model or "unknown",
            "kernel": os.uname().release, "python": sys.version.split()[0]}
