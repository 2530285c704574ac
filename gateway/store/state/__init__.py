"""The state plane for budgets and rate limits: an in-process store and a shared Redis one."""

from gateway.store.state.base import Bucket, Decision, StateStore, StateUnavailable, state_store_from_url

__all__ = ["Bucket", "Decision", "StateStore", "StateUnavailable", "state_store_from_url"]
