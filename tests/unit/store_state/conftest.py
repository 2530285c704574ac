import pytest

from gateway.store.state.memory import MemoryStateStore


@pytest.fixture
def store() -> MemoryStateStore:
    return MemoryStateStore()
