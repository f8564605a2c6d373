"""Publishing the requests of concurrent callers together."""

from __future__ import annotations

import asyncio

from schemas import InferenceRequest
from workers.client import Client


class Publisher:
    """Publishes the requests of concurrent callers together: whatever waits when the
    previous publication is acknowledged goes out as one `submit_many` (one record batch
    per partition), so a burst of callers costs a few broker round trips, not one each
    (the idempotent producer keeps one request in flight per partition). Nothing waits for
    a batch to fill: a lone request is published at once."""

    def __init__(self, client: Client, max_batch: int = 500) -> None:
        self._client = client
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[InferenceRequest, asyncio.Future[None]]] = asyncio.Queue()
        self._error: BaseException | None = None

    async def publish(self, request: InferenceRequest) -> None:
        """Until the broker acknowledged `request`; raises what the producer raised."""
        if self._error is not None:
            raise RuntimeError("the publisher stopped") from self._error
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((request, done))
        await done

    async def run(self) -> None:
        try:
            while True:
                batch = [await self._queue.get()]
                while not self._queue.empty() and len(batch) < self._max_batch:
                    batch.append(self._queue.get_nowait())
                waiting = [(r, f) for r, f in batch if not f.done()]  # callers gone: skip
                try:
                    await self._client.submit_many(r for r, _ in waiting)
                except Exception as exc:
                    for _, done in waiting:
                        if not done.done():
                            done.set_exception(exc)
                    continue
                for _, done in waiting:
                    if not done.done():
                        done.set_result(None)
        except BaseException as exc:  # cancelled or crashed: nobody may wait forever
            self._error = exc
            while not self._queue.empty():
                _, done = self._queue.get_nowait()
                if not done.done():
                    done.set_exception(RuntimeError("the publisher stopped"))
            raise
