import hashlib
import re

from gateway.store.keys import PREFIX_LEN, KeyRecord, generate_key, hash_key, static_key


def test_generated_keys_are_long_random_and_url_safe():
    keys = {generate_key() for _ in range(200)}
    assert len(keys) == 200
    for k in keys:
        assert re.fullmatch(r"gw-[A-Za-z0-9_-]{43}", k), k


def test_hash_is_sha256_hex_of_the_whole_key():
    k = generate_key()
    assert hash_key(k) == hashlib.sha256(k.encode()).hexdigest()
    assert len(hash_key(k)) == 64
    assert hash_key(k) != hash_key(k + "x")


def test_prefix_length_shows_little_of_the_key():
    k = generate_key()
    assert PREFIX_LEN == 10
    assert k[:PREFIX_LEN].startswith("gw-")


def test_static_key_entry_is_keyed_by_hash_and_hides_most_of_the_key():
    h, rec = static_key("acme", "env-secret-value-1234", "env:ACME_API_KEY")
    assert h == hash_key("env-secret-value-1234")
    assert rec == KeyRecord(id="env:ACME_API_KEY", tenant="acme", name=None, prefix="env-", created_at=rec.created_at)
    assert rec.created_at.tzinfo is not None
    assert rec.active


def test_key_record_has_no_hash_field():
    assert "key_hash" not in KeyRecord.__slots__
