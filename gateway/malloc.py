"""The C allocator's process-wide settings (glibc; elsewhere these are no-ops).

glibc gives each thread that allocates its own arena, and an arena keeps the pages it once used.
The gateway's threads (log writer, SQLite writer) allocate little and rarely, yet under load each
arena held on to several MB (measured: ~15 MB of a worker's resident memory after a 64-connection
run). One arena for the whole process costs no measurable throughput: only the event loop
allocates often.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools

_M_ARENA_MAX = -8
# How often freed heap pages go back to the OS. A trim after a load peak returns ~6 MB and takes
# under a millisecond of the event loop (measured after a 64-connection run): once per interval
# that is noise, and resident memory follows the load back down instead of staying at its peak.
TRIM_INTERVAL_S = 10.0


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def limit_arenas(arenas: int = 1) -> None:
    """Call before the process starts threads: a thread keeps the arena it first allocated from."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(_M_ARENA_MAX, arenas)


def return_free_heap() -> None:
    """Hand freed heap pages back to the OS (after start-up churned through temporaries)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


async def trim_periodically(interval_s: float = TRIM_INTERVAL_S) -> None:
    """`return_free_heap` every `interval_s`, for as long as the task runs."""
    while True:
        await asyncio.sleep(interval_s)
        return_free_heap()
