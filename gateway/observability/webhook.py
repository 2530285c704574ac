"""Operational notifications (breaker transitions) posted as Slack-compatible JSON.

Off the hot path: `notify()` only puts the message on a bounded queue; one background task
posts them. A full queue or a failed post drops the message and counts it; it never blocks
or fails a request. The webhook URL is a secret (it authorizes posting) and is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from gateway.observability.metrics import Metrics

if TYPE_CHECKING:
    import httpx

_log = logging.getLogger("gateway.webhook")


class WebhookNotifier:
    def __init__(self, url: str | None, metrics: Metrics, *, queue_size: int = 100, timeout_s: float = 5.0) -> None:
        self.url = url
        self.metrics = metrics
        self.timeout_s = timeout_s
        self._queue: asyncio.Queue[dict[str, object]] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if self.url:
            # Imported only when a webhook is configured: httpx (with what it pulls in) is ~8 MB per worker.
            import httpx

            self._client = httpx.AsyncClient(timeout=self.timeout_s)
            self._task = asyncio.create_task(self._run())

    def notify(self, text: str, **fields: object) -> None:
        if not self.url:
            return
        try:
            self._queue.put_nowait({"text": text, **fields})
        except asyncio.QueueFull:
            self.metrics.webhook_dropped.inc()

    async def _run(self) -> None:
        import httpx

        assert self._client is not None and self.url is not None
        while True:
            message = await self._queue.get()
            try:
                response = await self._client.post(self.url, json=message)
                response.raise_for_status()
            except httpx.HTTPError as e:
                self.metrics.webhook_dropped.inc()
                _log.warning("webhook delivery failed", extra={"fields": {"error": type(e).__name__}})
            finally:
                self._queue.task_done()

    async def aclose(self, drain_s: float = 2.0) -> None:
        if self._task is not None:
            # Give queued notifications a moment to go out: a shutdown is often why a breaker moved.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), drain_s)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.aclose()
