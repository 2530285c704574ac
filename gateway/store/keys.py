"""API keys: generation, the ledger-backed store, and the in-memory cache the hot path reads.

Only a SHA-256 of each key is stored. A slow password hash (bcrypt, argon2) exists to make
guessing low-entropy passwords expensive; these keys carry 256 random bits, so guessing is
hopeless whatever the hash, and a fast hash lets every request authenticate with one dict
lookup. Looking up by hash also means no comparison ever touches the secret itself, so there is
no timing side channel to protect against.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.ledger import Ledger
from gateway.store.schema import api_keys, audit_log

log = logging.getLogger("gateway.store.keys")

KEY_PREFIX = "gw-"
PREFIX_LEN = 10  # "gw-" + 7 random characters: enough to tell keys apart, far too little to guess one


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _new_id() -> str:
    return "key_" + secrets.token_hex(8)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    tenant: str
    name: str | None
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def static_key(tenant: str, key: str, key_id: str) -> tuple[str, KeyRecord]:
    """A (hash, record) entry for a key taken from the environment rather than the ledger.

    Its prefix shows only 4 characters: such keys are chosen by operators and may be short.
    """
    return hash_key(key), KeyRecord(id=key_id, tenant=tenant, name=None, prefix=key[:4], created_at=_now())


_COLUMNS = (
    api_keys.c.id,
    api_keys.c.tenant,
    api_keys.c.name,
    api_keys.c.prefix,
    api_keys.c.created_at,
    api_keys.c.revoked_at,
)


def _record(row: Any) -> KeyRecord:  # a Row with the _COLUMNS fields
    return KeyRecord(
        id=row.id,
        tenant=row.tenant,
        name=row.name,
        prefix=row.prefix,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


async def _audit(conn: AsyncConnection, actor: str, action: str, resource: str, detail: dict[str, Any]) -> None:
    await conn.execute(
        insert(audit_log).values(at=_now(), actor=actor, action=action, resource=resource, detail=detail)
    )


class KeyStore:
    """Keys in the ledger. Every method may raise LedgerUnavailable."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    async def create(self, tenant: str, name: str | None = None, actor: str = "cli") -> tuple[KeyRecord, str]:
        """Store a new key; the plaintext is returned here and never again."""
        key = generate_key()
        rec = KeyRecord(id=_new_id(), tenant=tenant, name=name, prefix=key[:PREFIX_LEN], created_at=_now())
        async with self._ledger.write() as conn:
            await conn.execute(
                insert(api_keys).values(
                    id=rec.id,
                    tenant=rec.tenant,
                    name=rec.name,
                    key_hash=hash_key(key),
                    prefix=rec.prefix,
                    created_at=rec.created_at,
                )
            )
            await _audit(conn, actor, "key.create", rec.id, {"tenant": tenant, "name": name, "prefix": rec.prefix})
        return rec, key

    async def list(self, tenant: str | None = None, include_revoked: bool = False) -> builtins.list[KeyRecord]:
        q = select(*_COLUMNS).order_by(api_keys.c.created_at, api_keys.c.id)
        if tenant is not None:
            q = q.where(api_keys.c.tenant == tenant)
        if not include_revoked:
            q = q.where(api_keys.c.revoked_at.is_(None))
        async with self._ledger.read() as conn:
            rows = (await conn.execute(q)).all()
        return [_record(r) for r in rows]

    async def get(self, key_id: str) -> KeyRecord | None:
        async with self._ledger.read() as conn:
            row = (await conn.execute(select(*_COLUMNS).where(api_keys.c.id == key_id))).first()
        return _record(row) if row is not None else None

    async def revoke(self, key_id: str, actor: str = "cli") -> KeyRecord | None:
        """Revoke a key; None if there is no such key. Revoking twice changes nothing."""
        async with self._ledger.write() as conn:
            # The guard on revoked_at makes concurrent revokes write one timestamp and one audit row.
            done = await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=_now())
            )
            if done.rowcount:
                await _audit(conn, actor, "key.revoke", key_id, {})
            row = (await conn.execute(select(*_COLUMNS).where(api_keys.c.id == key_id))).first()
        return _record(row) if row is not None else None

    async def active_hashes(self) -> dict[str, KeyRecord]:
        q = select(api_keys.c.key_hash, *_COLUMNS).where(api_keys.c.revoked_at.is_(None))
        async with self._ledger.read() as conn:
            rows = (await conn.execute(q)).all()
        return {r.key_hash: _record(r) for r in rows}

    async def count_active(self) -> int:
        q = select(func.count()).select_from(api_keys).where(api_keys.c.revoked_at.is_(None))
        async with self._ledger.read() as conn:
            return int((await conn.execute(q)).scalar_one())


class ActiveKeySource(Protocol):
    async def active_hashes(self) -> dict[str, KeyRecord]: ...


class KeyCache:
    """hash -> KeyRecord in memory; the request path authenticates without touching the ledger.

    The map is replaced whole on refresh (never mutated), so a lookup always sees one consistent
    snapshot. If the ledger is down the last map stays in use: keys keep working, and only keys
    created or revoked during the outage wait for it to end.
    """

    def __init__(
        self,
        source: ActiveKeySource | None,
        *,
        static: Mapping[str, KeyRecord] | None = None,
        min_refresh_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._static = dict(static or {})
        self._map: dict[str, KeyRecord] = dict(self._static)
        self._min_interval = min_refresh_interval_s
        self._clock = clock
        self._last_miss_refresh = float("-inf")
        self._inflight: asyncio.Task[None] | None = None
        self.last_refresh_ok: bool | None = None  # None until the first refresh

    def __len__(self) -> int:
        return len(self._map)

    def lookup(self, key: str) -> KeyRecord | None:
        return self._map.get(hash_key(key))

    async def refresh(self) -> None:
        """Reload from the ledger; raises (LedgerUnavailable) and keeps the old map on failure."""
        await asyncio.shield(self._start_refresh())

    async def lookup_or_refresh(self, key: str) -> KeyRecord | None:
        """lookup(), and on a miss one coalesced, rate-limited refresh before answering."""
        h = hash_key(key)
        rec = self._map.get(h)
        if rec is not None:
            return rec
        task = self._inflight
        # Only miss-triggered reads count against the limit: the periodic refresh is not what a
        # flood of bad keys can drive, and a miss right after it should still see a new key.
        if task is None and self._clock() - self._last_miss_refresh >= self._min_interval:
            self._last_miss_refresh = self._clock()
            task = self._start_refresh()
        if task is not None:
            # A failed refresh is logged by the task; the answer then comes from the old map.
            with contextlib.suppress(Exception):
                await asyncio.shield(task)
        return self._map.get(h)

    async def run(self, interval_s: float) -> None:
        """Refresh every interval_s until cancelled; failures are logged and the old map kept."""
        while True:
            await asyncio.sleep(interval_s)
            with contextlib.suppress(Exception):  # logged by _load
                await self.refresh()

    def _start_refresh(self) -> asyncio.Task[None]:
        if self._inflight is None:
            task = asyncio.get_running_loop().create_task(self._load(), name="gateway-key-refresh")
            task.add_done_callback(self._finished)
            self._inflight = task
        return self._inflight

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight = None
        if not task.cancelled():
            task.exception()  # marks it retrieved: failures are logged in _load

    async def _load(self) -> None:
        if self._source is None:
            return
        try:
            fresh = await self._source.active_hashes()
        except Exception as e:
            # The error text comes from the driver or our own message: never a key or a hash.
            log.warning("key cache refresh failed, keeping %d known keys: %s", len(self._map), e)
            self.last_refresh_ok = False
            raise
        if self.last_refresh_ok is False:
            log.info("key cache refresh recovered: %d keys", len(fresh) + len(self._static))
        # Environment keys win: the ledger can neither revoke nor reassign them.
        self._map = {**fresh, **self._static}
        self.last_refresh_ok = True
