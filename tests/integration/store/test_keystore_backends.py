from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from gateway.store.keys import KeyCache, KeyStore, hash_key
from gateway.store.schema import api_keys, audit_log


async def _audit_rows(ledger):
    async with ledger.read() as conn:
        return (await conn.execute(select(audit_log).order_by(audit_log.c.id))).all()


async def test_create_returns_the_plaintext_once_and_stores_only_its_hash(ledger):
    store = KeyStore(ledger)
    before = datetime.now(UTC)
    rec, key = await store.create("acme", name="ci")
    assert key.startswith("gw-") and len(key) == 46
    assert rec.id.startswith("key_") and len(rec.id) == 20
    assert (rec.tenant, rec.name, rec.prefix, rec.revoked_at) == ("acme", "ci", key[:10], None)
    assert before - timedelta(seconds=1) <= rec.created_at <= datetime.now(UTC) + timedelta(seconds=1)
    async with ledger.read() as conn:
        row = (await conn.execute(select(api_keys))).one()
    assert row.key_hash == hash_key(key)
    assert key not in [str(v) for v in row]
    assert row.last_used_at is None


async def test_list_filters_by_tenant_and_hides_revoked_keys(ledger):
    store = KeyStore(ledger)
    a1, _ = await store.create("acme", name="one")
    a2, _ = await store.create("acme")
    b1, _ = await store.create("beta", name="b")
    assert [r.id for r in await store.list()] == [a1.id, a2.id, b1.id]
    assert [r.id for r in await store.list("acme")] == [a1.id, a2.id]
    assert await store.list("nobody") == []
    await store.revoke(a1.id)
    assert [r.id for r in await store.list("acme")] == [a2.id]
    listed = await store.list("acme", include_revoked=True)
    assert [r.id for r in listed] == [a1.id, a2.id]
    assert listed[0].revoked_at is not None and listed[0].revoked_at.tzinfo is not None
    assert listed[1] == a2  # round-trips exactly, created_at included


async def test_revoke_sets_revoked_at_once_and_unknown_ids_give_none(ledger):
    store = KeyStore(ledger)
    rec, _ = await store.create("acme")
    revoked = await store.revoke(rec.id, actor="admin:ops")
    assert revoked is not None and revoked.id == rec.id and revoked.revoked_at is not None
    again = await store.revoke(rec.id)
    assert again == revoked  # the first timestamp stays
    assert await store.revoke("key_0000000000000000") is None
    assert await store.get(rec.id) == revoked
    assert await store.get("key_missing") is None


async def test_audit_rows_for_create_and_revoke_name_no_secret(ledger):
    store = KeyStore(ledger)
    rec, key = await store.create("acme", name="ci", actor="cli")
    await store.revoke(rec.id, actor="admin")
    await store.revoke(rec.id, actor="admin")  # a no-op: no second row
    rows = await _audit_rows(ledger)
    assert [(r.actor, r.action, r.resource) for r in rows] == [
        ("cli", "key.create", rec.id),
        ("admin", "key.revoke", rec.id),
    ]
    assert rows[0].detail == {"tenant": "acme", "name": "ci", "prefix": key[:10]}
    assert rows[0].at.tzinfo is not None and rows[0].id < rows[1].id
    flat = repr([tuple(r) for r in rows])
    assert key not in flat and hash_key(key) not in flat


async def test_active_hashes_and_count(ledger):
    store = KeyStore(ledger)
    assert await store.active_hashes() == {}
    assert await store.count_active() == 0
    r1, _ = await store.create("acme")
    r2, k2 = await store.create("beta")
    await store.revoke(r1.id)
    assert await store.active_hashes() == {hash_key(k2): r2}
    assert await store.count_active() == 1


async def test_cache_over_the_store_sees_new_keys_at_once_and_drops_revoked_ones(ledger):
    store = KeyStore(ledger)
    old, old_key = await store.create("acme")
    cache = KeyCache(store)
    await cache.refresh()
    assert cache.lookup(old_key) == old
    new, new_key = await store.create("acme")
    assert cache.lookup(new_key) is None
    assert await cache.lookup_or_refresh(new_key) == new
    await store.revoke(old.id)
    await cache.refresh()
    assert cache.lookup(old_key) is None
    assert cache.lookup(new_key) == new
