"""Identifiers for requests, envelopes and reservations: unique, cheap, and not secrets.

`os.urandom` is a system call per id (measured at several microseconds on virtual machines, a
visible share of a request); these ids need uniqueness, not unpredictability, so they come from
the `random` module's generator, which is seeded from the OS at start and re-seeded in every
forked child, so two workers never share a sequence.
"""

from __future__ import annotations

import random


def random_hex(nbytes: int) -> str:
    return random.getrandbits(nbytes * 8).to_bytes(nbytes, "big").hex()


def request_id() -> str:
    return "req_" + random_hex(12)
