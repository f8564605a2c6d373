"""The threads that run model batches, highest lane first, with express threads for the top lane.

A worker keeps several batches in flight so host work overlaps model runs. A FIFO in front of
the model would let a bulk batch, formed while the last one ran, go before a realtime batch
formed a moment later: the realtime task would wait for two bulk runs instead of at most the
rest of one. So waiting runs are taken by priority (the batch's highest lane), then in order.

A model run cannot be interrupted, so on a CPU even "the rest of one" bulk run can be longer
than a realtime task's whole idle latency. Express threads take top-priority runs only: a
realtime batch starts at once beside the bulk runs in progress instead of after them, and the
general threads can be given a lower CPU priority (`initializer`) so the kernel hands the
cores to the express run, and to the other stages, first.

The next run starts on the thread the moment the last one returns, as with a
`ThreadPoolExecutor`, not when the event loop next gets round to it: on a GPU a loop busy
encoding the last batch's outputs must not leave the device idle.
"""

from __future__ import annotations

import collections
import concurrent.futures
import heapq
import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
_Job = tuple["concurrent.futures.Future[Any]", Callable[..., Any], tuple[Any, ...]]
Initializer = Callable[[bool], None]
"""Runs first on every thread; its argument says whether the thread is an express one."""


class PriorityExecutor:
    """`workers` general threads running submitted calls lowest `priority` first, then FIFO,
    and `express` threads running only calls of priority <= `express_priority`.

    A top call goes to an idle express thread when there is one, else to any idle thread: it
    never waits behind a lower call, only for a thread."""

    def __init__(
        self,
        workers: int,
        name: str,
        *,
        express: int = 0,
        express_priority: int = 0,
        initializer: Initializer | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if express < 0:
            raise ValueError(f"express must be >= 0, got {express}")
        self.express_priority = express_priority
        self._top: collections.deque[_Job] = collections.deque()
        self._rest: list[tuple[int, int, _Job]] = []
        self._order = itertools.count()
        # One lock, a condition per kind of thread, and counts of the threads waiting that no
        # call has been promised to: a call wakes one thread that may take it, not all of
        # them (each thread woken for nothing costs a wake-up and a turn at the GIL).
        self._lock = threading.Lock()
        self._general_wake = threading.Condition(self._lock)
        self._express_wake = threading.Condition(self._lock)
        self._closed = False
        self._idle_express = 0
        self._idle_general = 0
        self._initializer = initializer
        kinds = [(False, f"{name}-{i}") for i in range(workers)]
        kinds += [(True, f"{name}-express-{i}") for i in range(express)]
        self._threads = [
            threading.Thread(target=self._work, args=(is_express,), name=thread, daemon=True)
            for is_express, thread in kinds
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self, priority: int, function: Callable[..., T], *args: Any
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        job: _Job = (future, function, args)
        with self._lock:
            if self._closed:
                raise RuntimeError("executor is shut down")
            if priority <= self.express_priority:
                self._top.append(job)
                self._wake(express_first=True)
            else:
                heapq.heappush(self._rest, (priority, next(self._order), job))
                self._wake(express_first=False)
        return future

    def _wake(self, express_first: bool) -> None:
        """Wake one idle thread that may take the call just queued (the lock is held): for a
        top call an express thread, else a general one; for any other call a general one."""
        if express_first and self._idle_express:
            self._idle_express -= 1
            self._express_wake.notify()
        elif self._idle_general:
            self._idle_general -= 1
            self._general_wake.notify()

    def shutdown(self, wait: bool = True) -> None:
        """No more submissions; jobs already queued still run. Idempotent."""
        with self._lock:
            self._closed = True
            self._idle_express = self._idle_general = 0
            self._express_wake.notify_all()
            self._general_wake.notify_all()
        if wait:
            for thread in self._threads:
                thread.join()

    def _next(self, express: bool) -> _Job | None:
        """The next job this thread may take, waiting for one; None once shut down and done."""
        with self._lock:
            while True:
                if express:
                    if self._top:
                        job = self._top.popleft()
                        if self._top:  # general threads left these to this thread: not now
                            self._wake(express_first=True)
                        return job
                else:
                    # A top job is left to an idle express thread, which is already woken.
                    if self._top and self._idle_express == 0:
                        return self._top.popleft()
                    if self._rest:
                        return heapq.heappop(self._rest)[2]
                if self._closed and not self._top and (express or not self._rest):
                    return None
                # Counted idle until a call is promised to this thread (`_wake`).
                if express:
                    self._idle_express += 1
                    self._express_wake.wait()
                else:
                    self._idle_general += 1
                    self._general_wake.wait()

    def _work(self, express: bool) -> None:
        if self._initializer is not None:
            try:
                self._initializer(express)
            except Exception:  # a thread that kept its settings still runs the jobs
                log.warning("model thread initializer failed", exc_info=True)
        while (job := self._next(express)) is not None:
            future, function, args = job
            if not future.set_running_or_notify_cancel():
                continue  # its waiter was cancelled before it started
            try:
                result = function(*args)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
