"""Token counting of large inputs, off the event loop.

Tokenizing is CPU work: ~0.1 us per character of ordinary text, and superlinear in the length of
one unbroken run of characters (BPE merges inside one regex piece), measured 390 ms for a 1 MB
one-word prompt and 1.5 s for 3 MiB. Done on the event loop it stalls every other request of the
process, health checks included. So:

- A request whose body is at most `INLINE_MAX_BYTES` is counted inline, as before: no text in it
  is longer than its body (a JSON string never decodes to more characters than it has bytes; the
  re-encoded tool definitions can only grow by how numbers are spelled, a few times at most, and
  digits are cheap to count), so the loop is held about a millisecond at most, and the
  small-prompt hot path pays one comparison.
- A larger one is counted in a small thread pool: tiktoken's Rust core releases the GIL while it
  encodes, so the loop keeps running. At most `threads` counts run at once (each holds a slot
  until its thread is done, even when its client has left, so the pool never queues more work
  than it has threads); the others wait for a slot at most `wait_s`, then the request is refused
  with 503 `estimator_busy` and a Retry-After. One tenant's counts queue behind each other
  first, so a tenant flooding large prompts delays another's by at most one count per thread.

Why refuse rather than fall back to a cheap upper bound (for byte-level BPE, the UTF-8 byte
count never under-counts text): the bound can be 4-5x the real count for ordinary text, so it
would falsely trip `max_input_tokens` (a 400 the client cannot fix by retrying) and budgets (a
false `insufficient_quota`), and the non-text parts of a prompt (images, files) are not bounded
by their bytes at all. A 503 with Retry-After is honest, and only large prompts can get it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from gateway.errors import ServiceUnavailable
from gateway.resilience.backoff import retry_after_headers

T = TypeVar("T")

# Measured on a loaded 2-core machine: 8 KiB of one unbroken word tokenizes in ~1 ms, of ordinary
# text in ~0.25 ms; a hop to a thread and back costs ~0.1 ms.
INLINE_MAX_BYTES = 8192
# One thread per two cores (at least one, at most four): the other cores stay free for the loop
# (and the other workers), so even a flood of pathological prompts costs each loop at most a share
# of a core, never a stall.
DEFAULT_THREADS = max(1, min(4, (os.cpu_count() or 2) // 2))
DEFAULT_WAIT_S = 5.0


class EstimatorBusy(ServiceUnavailable):
    code = "estimator_busy"


class _Lane:
    __slots__ = ("places", "users")

    def __init__(self, places: int) -> None:
        self.places = asyncio.Semaphore(places)
        self.users = 0  # counts of this lane waiting or running


class OffLoopCounter:
    """A bounded pool that runs token counts; one per process, made at start-up."""

    def __init__(self, threads: int = DEFAULT_THREADS, wait_s: float = DEFAULT_WAIT_S) -> None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        self.threads = threads
        self.wait_s = wait_s
        self._slots = asyncio.Semaphore(threads)
        # One lane per tenant with counts waiting or running: a tenant holds at most `threads` places
        # in the queue for slots, so a flood of one tenant's large prompts delays another tenant's by
        # at most one count per thread, not by the whole flood. Dropped when idle.
        self._lanes: dict[str, _Lane] = {}
        self._pool: ThreadPoolExecutor | None = None
        self.running = 0  # counts in a thread now (for tests and metrics)

    async def run(self, fn: Callable[..., T], *args: object, lane: str | None = None) -> T:
        """fn(*args) in a pool thread, its result or its exception; 503 when no slot frees in time.

        `lane`: whose count it is (the tenant); counts of one lane queue behind each other."""
        held = self._enter(lane) if lane is not None else None
        got_lane = got_slot = False
        try:
            async with asyncio.timeout(self.wait_s):
                if held is not None:
                    await held.places.acquire()
                    got_lane = True
                await self._slots.acquire()
                got_slot = True
        except TimeoutError:
            raise EstimatorBusy(
                "The gateway is busy counting other large prompts; retry shortly.",
                headers=retry_after_headers(1.0)) from None
        finally:
            if not got_slot:  # timed out or cancelled while waiting: give back what was taken
                self._leave(lane, held, got_lane)
        loop = asyncio.get_running_loop()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="gateway-tokenize")
        try:
            job: Future[T] = self._pool.submit(fn, *args)
        except BaseException:
            self._slots.release()
            self._leave(lane, held, True)
            raise
        self.running += 1

        def done(_: Future[T]) -> None:  # in the pool thread: the slot is the loop's
            try:
                loop.call_soon_threadsafe(self._finished, lane, held)
            except RuntimeError:  # the loop is closed: nobody is left to wait for a slot
                pass

        job.add_done_callback(done)
        # A cancelled caller (its client left) stops waiting; the count runs out in its thread and
        # only then gives its slot back.
        return await asyncio.wrap_future(job)

    def _enter(self, lane: str) -> _Lane:
        held = self._lanes.get(lane)
        if held is None:
            held = self._lanes[lane] = _Lane(self.threads)
        held.users += 1
        return held

    def _leave(self, lane: str | None, held: _Lane | None, release: bool) -> None:
        if held is None or lane is None:
            return
        if release:
            held.places.release()
        held.users -= 1
        if held.users == 0:
            del self._lanes[lane]

    def _finished(self, lane: str | None, held: _Lane | None) -> None:
        self.running -= 1
        self._slots.release()
        self._leave(lane, held, True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
