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

A step that needs no wait returns None and costs a call: the default path creates no task.
"""

from __future__ import annotations

import asyncio
import logging

from gateway.pipeline.context import Call

_log = logging.getLogger("gateway.cleanup")

# How a call ended, as the clean-up steps see it (`Call.ending`).
SERVED = "served"  # the whole answer was sent (an error reported inside a stream is "failed")
FAILED = "failed"  # an error answer, no answer, or a stream that broke
CANCELLED = "cancelled"  # the request's task was cancelled by the server (shutdown), not by its client
CLIENT_GONE = "client_gone"  # the client left before the answer was complete
ENDINGS = (SERVED, FAILED, CANCELLED, CLIENT_GONE)


async def run_cleanups(call: Call, ending: str) -> None:
    steps = call.cleanups
    if not steps:
        return
    if call.ending is None:
        call.ending = ending
    cancelled = False
    while steps:
        step = steps.pop()
        try:
            pending = step(call, call.ending)
            if pending is not None:
                await asyncio.shield(pending)
        except asyncio.CancelledError:
            # The step goes on in its own task (shield); the rest must still run.
            cancelled = True
        except Exception:  # a clean-up's boundary: the steps after it must run all the same
            _log.exception("clean-up step failed", extra={"fields": {"request_id": call.request_id}})
    if cancelled:
        raise asyncio.CancelledError
