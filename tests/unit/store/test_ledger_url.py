import pytest

from gateway.store.ledger import Ledger, LedgerUnavailable, async_url


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("sqlite:///rel/ledger.db", "sqlite+aiosqlite"),
        ("sqlite:////abs/ledger.db", "sqlite+aiosqlite"),
        ("sqlite:///:memory:", "sqlite+aiosqlite"),
        ("postgresql://u:p@h:5432/db", "postgresql+asyncpg"),
        ("postgres://u@h/db", "postgresql+asyncpg"),
    ],
)
def test_urls_map_to_async_drivers(url, driver):
    u = async_url(url)
    assert u.drivername == driver
    assert u.database == url.split("/", 3)[3]


def test_password_survives_the_mapping_but_not_repr():
    u = async_url("postgresql://user:s3cret@db.example:6543/gw?application_name=x")
    assert (u.username, u.password, u.host, u.port, u.database) == ("user", "s3cret", "db.example", 6543, "gw")
    assert u.query == {"application_name": "x"}
    ledger = Ledger.from_url("postgresql://user:s3cret@db.example:6543/gw")
    assert "s3cret" not in repr(ledger)
    assert ledger.backend == "postgresql"


def test_unsupported_scheme_is_refused():
    with pytest.raises(ValueError, match="unsupported ledger URL"):
        async_url("mysql://u@h/db")


async def test_sqlite_parent_directory_is_created(tmp_path):
    target = tmp_path / "a" / "b" / "ledger.db"
    ledger = Ledger.from_url(f"sqlite:///{target}")
    try:
        assert target.parent.is_dir()
        assert ledger.backend == "sqlite"
    finally:
        await ledger.aclose()


async def test_memory_sqlite_works_without_a_file():
    ledger = Ledger.from_url("sqlite:///:memory:")
    try:
        assert await ledger.ping()
    finally:
        await ledger.aclose()


def test_ledger_unavailable_is_a_plain_exception():
    assert issubclass(LedgerUnavailable, Exception)
