"""Clean-up: the one way a request gives back what its stages took.

A stage that takes something for the length of a call (an in-flight slot, a budget reservation,
an upstream stream) registers a step on `Call.cleanups` the moment it has it. When the request is
over (after the last byte of its answer, or when it failed, was cancelled or lost its client) the
ingress runs `run_cleanups` once: every step, last registered first, each told how the call ended.

Guarantees, each proven by tests/unit/pipeline:
- exactly once: a step is popped before it runs; a second run finds nothing to do;
- LIFO: what was taken last is given back first (a stream is closed before its reservation is
  settled, the tenant's slot freed before the record is written);
- shielded: a step that has to wait runs to its end in its own task even when the request is
  cancelled meanwhile (a settlement cut short would let the spend be forgotten), and the steps
  after it still run; the cancellation is raised once they have all been started;
- one failing step does not skip the others (it is logged with the request id).

A step that needs no wait returns None and costs a call: the default path creates no task and\nno coroutine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from gateway.pipeline.context import Call

_log = logging.getLogger("gateway.cleanup")

# How a call ended, as the clean-up steps see it (`Call.ending`).
SERVED = "served"  # the whole answer was sent (an error reported inside a stream is "failed")
FAILED = "failed"  # an error answer, no answer, or a stream that broke
CANCELLED = "cancelled"  # the request's task was cancelled by the server (shutdown), not by its client
CLIENT_GONE = "client_gone"  # the client left before the answer was complete
ENDINGS = (SERVED, FAILED, CANCELLED, CLIENT_GONE)


def run_cleanups(call: Call, ending: str) -> Awaitable[None] | None:
    """Run the call's clean-up steps; None when all are done, else an awaitable of the rest, from
    the first step that has to wait (the default path makes no coroutine)."""
    steps = call.cleanups
    if call.ending is None:
        call.ending = ending
    while steps:
        step = steps.pop()
        try:
            pending = step(call, call.ending)
        except Exception:  # a clean-up's boundary: the steps after it must run all the same
            _log.exception("clean-up step failed", extra={"fields": {"request_id": call.request_id}})
            continue
        if pending is not None:
            return _waiting(call, pending)
    return None


async def _waiting(call: Call, first: Awaitable[None]) -> None:
    steps = call.cleanups
    cancelled = False
    pending: Awaitable[None] | None = first
    while pending is not None:
        try:
            await asyncio.shield(pending)
        except asyncio.CancelledError:
            # The step goes on in its own task (shield); the rest must still run.
            cancelled = True
        except Exception:
            _log.exception("clean-up step failed", extra={"fields": {"request_id": call.request_id}})
        pending = None
        while steps and pending is None:
            step = steps.pop()
            try:
                pending = step(call, call.ending or FAILED)
            except Exception:
                _log.exception("clean-up step failed", extra={"fields": {"request_id": call.request_id}})
    if cancelled:
        raise asyncio.CancelledError
