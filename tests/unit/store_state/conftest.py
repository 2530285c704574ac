import pytest

from gateway.store.state.memory import MemoryStateStore
from gateway.store.state.periods import DEFAULT_DONE_TTL_S


@pytest.fixture
def store() -> MemoryStateStore:
    # The shared behaviour is specified with Redis's idempotency window; memory's own default is
    # shorter (see periods.MEMORY_DONE_TTL_S) and has its own test.
    return MemoryStateStore(done_ttl_s=DEFAULT_DONE_TTL_S)
