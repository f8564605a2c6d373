"""Model lifecycle events: one call logs, counts and appends to the Redis model-events stream.

The stream (`RedisKeys.model_events`, capped) is the ledger of model events: which worker
loaded, switched, refused, retired or released which version, when and why.
"""

from __future__ import annotations

import enum
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from workers.models.routing import RoutingTable
from workers.observability.metrics import WorkerMetrics

log = logging.getLogger(__name__)

STREAM_MAX_LEN = 10_000


class EventKind(enum.StrEnum):
    LOADED = "loaded"
    """Checked and warmed up; ready to take a role."""
    SWITCHED = "switched"
    """Became the current version of unpinned traffic."""
    CANARY = "canary"
    SHADOW = "shadow"
    REFUSED = "refused"
    """Did not fit the signature, failed to load or failed warm-up; nothing changed."""
    RETIRED = "retired"
    """No longer routed to; released once its running batches finish."""
    RELEASED = "released"


class ModelEvents:
    """Where lifecycle events go. `redis` may be None (unit tests, tools): logs and metrics only."""

    def __init__(
        self,
        metrics: WorkerMetrics,
        worker: str,
        redis: aioredis.Redis | None = None,
        stream: str | None = None,
    ) -> None:
        self.metrics = metrics
        self.worker = worker
        self._redis = redis
        self._stream = stream
        self.recent: list[dict[str, str]] = []
        """The last events, newest last (bounded), for tests and `/debug`-style views."""

    async def record(
        self,
        kind: EventKind,
        model: str,
        version: int,
        *,
        source: str = "",
        reason: str = "",
        message: str = "",
    ) -> None:
        fields: dict[Any, Any] = {
            "event": kind.value,
            "model": model,
            "version": str(version),
            "worker": self.worker,
            "source": source,
            "reason": reason,
            "message": message[:2000],
            "at_ms": str(int(time.time() * 1000)),
        }
        level = logging.WARNING if kind is EventKind.REFUSED else logging.INFO
        log.log(level, "model %s v%d %s (%s) %s", model, version, kind.value, source, message)
        self._count(kind, model, source, reason)
        self.recent = [*self.recent[-99:], fields]
        if self._redis is None or self._stream is None:
            return
        try:
            await self._redis.xadd(self._stream, fields, maxlen=STREAM_MAX_LEN, approximate=True)
        except (RedisError, OSError) as exc:  # the event is logged and counted already
            log.warning("model event not written to %s: %s", self._stream, exc)

    def routing(self, model: str, table: RoutingTable) -> None:
        gauge = self.metrics.model_serving_version
        gauge.labels(model, "current").set(table.current)
        gauge.labels(model, "canary").set(table.canary or 0)
        gauge.labels(model, "shadow").set(table.shadow or 0)

    def paused(self, model: str, seconds: float) -> None:
        self.metrics.model_swap_pause.labels(model).observe(seconds)

    def _count(self, kind: EventKind, model: str, source: str, reason: str) -> None:
        if kind is EventKind.SWITCHED:
            self.metrics.model_swaps.labels(model, source or "unknown").inc()
        elif kind is EventKind.REFUSED:
            self.metrics.model_load_failures.labels(model, reason or "unknown").inc()
