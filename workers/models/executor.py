"""The threads that run model batches, highest lane first.

A worker keeps several batches in flight so host work overlaps model runs, but the model
runs them one at a time (`ModelRuntime`'s `concurrent_runs`). A FIFO in front of the model
would let a bulk batch, formed while the last one ran, go before a realtime batch formed a
moment later: the realtime task would wait for two bulk runs instead of at most the rest of
one. So waiting runs are taken by priority (the batch's highest lane), then in order.

The next run starts on the thread the moment the last one returns, as with a
`ThreadPoolExecutor`, not when the event loop next gets round to it: on a GPU a loop busy
encoding the last batch's outputs must not leave the device idle.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
_Job = tuple["concurrent.futures.Future[Any]", Callable[..., Any], tuple[Any, ...]]
_LAST = sys.maxsize
"""Priority of the stop marks: every job submitted before `shutdown` runs first."""


class PriorityExecutor:
    """`workers` threads running submitted calls lowest `priority` first, then FIFO."""

    def __init__(
        self,
        workers: int,
        name: str,
        initializer: Callable[..., None] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._jobs: queue.PriorityQueue[tuple[int, int, _Job | None]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._closed = False
        self._initializer = initializer
        self._initargs = initargs
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self, priority: int, function: Callable[..., T], *args: Any
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("executor is shut down")
            self._jobs.put((priority, next(self._order), (future, function, args)))
        return future

    def shutdown(self, wait: bool = True) -> None:
        """No more submissions; jobs already queued still run. Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                for _ in self._threads:
                    self._jobs.put((_LAST, next(self._order), None))
        if wait:
            for thread in self._threads:
                thread.join()

    def _work(self) -> None:
        if self._initializer is not None:
            try:
                self._initializer(*self._initargs)
            except Exception:  # a thread that kept its settings still runs the jobs
                log.warning("model thread initializer failed", exc_info=True)
        while True:
            _, _, job = self._jobs.get()
            if job is None:
                return
            future, function, args = job
            if not future.set_running_or_notify_cancel():
                continue  # its waiter was cancelled before it started
            try:
                result = function(*args)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
