"""What one call reserved, whatever the state store: the Limits stage and both reservation
strategies (limits/local.py, limits/networked.py) share it.

`parts` is each group's handle, in the strategy's own terms: the memory store's `Held` record
(handed over, no id), or the group's Buckets (a networked store finds them by `reservation_id`).
One list either way: a reservation allocates nothing for the strategy it does not use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.limits.plan import GroupPlan

# Attempts that failed in a way the provider may still bill whole: it had the request and was
# working on it when the gateway stopped waiting (Attempt.error names).
BILLED_FAILURES = ("UpstreamTimeout",)


# eq=False: a Hold is a key of the live holds (identity hash).
@dataclass(slots=True, eq=False)
class Hold:
    """What one call reserved; settled or released exactly once."""

    reservation_id: str  # "" when the store is in this process: it hands over the hold itself
    parts: list[tuple[GroupPlan, Any]]  # (group, the strategy's handle on what it holds there)
    prompt_tokens: int
    completion_tokens: int
    usd_picousd: int
    done: bool = False
    # Earlier attempts' reservations, spent: each timed out while its provider worked (it may have
    # billed them whole), and the next attempt reserved anew (`Limits.again`).
    sunk: tuple[Hold, ...] = ()
