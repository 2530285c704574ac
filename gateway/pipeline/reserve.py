"""limits, as a stage: the prompt estimate, and what the call may spend reserved on every counter
it draws on (gateway/limits/stage.py does the work); its clean-up settles the reservation.

How the clean-up settles, by how the call ended:
- a provider answered (served, or cut short after it began): the usage the answer reported, or the
  whole reservation when none was reported (a stream cut short may have been billed for all it was
  allowed): see `Limits.settle`;
- a stage answered early (no provider was called: a cache hit): released, nothing was billed;
- the client left, or the server cancelled the request, while a provider was working on it: the
  provider may bill what it generated, so the reservation stands as spent, recorded against the
  target being called; between attempts nothing was being billed;
- no attempt answered: released, unless an attempt timed out while its provider worked (see
  `Limits.fail`).
"""

from __future__ import annotations

from collections.abc import Awaitable
from functools import partial

from gateway.limits.stage import Hold
from gateway.pipeline.cleanup import CANCELLED, CLIENT_GONE
from gateway.pipeline.context import Call
from gateway.pipeline.stage import ModelRequest, Stage
from gateway.providers.base import Usage


class Reserve(Stage):
    name = "limits"

    def before(self, req: ModelRequest) -> Awaitable[None] | None:
        call = req.call
        assert req.route is not None
        held = self.gateway.limits.reserve_now(call, req.route, req.body)
        if held is None or isinstance(held, Hold):
            self._held(call, held)
            return None
        return self._held_later(call, held)  # a networked store, or a large prompt counted off the loop

    async def _held_later(self, call: Call, held: Awaitable[Hold | None]) -> None:
        self._held(call, await held)

    def _held(self, call: Call, hold: Hold | None) -> None:
        if hold is not None:
            call.again = partial(self.gateway.limits.again, hold)
        call.cleanups.append(partial(self._end, hold))

    def _end(self, hold: Hold | None, call: Call, ending: str) -> Awaitable[None] | None:
        limits = self.gateway.limits
        if call.answered_by is not None:
            if call.provider is None:  # answered before any provider was called
                return limits.release_now(hold)
            return limits.settle_now(hold, call.usage, call.provider, call.target_model, call)
        if ending is CANCELLED or ending is CLIENT_GONE:
            attempt = call.attempts[-1] if call.attempts else None
            if attempt is not None and not attempt.skipped and attempt.error == "Cancelled":
                call.provider, call.target_model = attempt.provider, attempt.model
                call.usage = Usage(prompt_tokens=call.prompt_estimate or 0)
                return limits.settle_now(hold, None, call.provider, call.target_model, call)
        # (what earlier attempts that timed out reserved is spent: see Limits.fail)
        return limits.fail_now(hold, call)
