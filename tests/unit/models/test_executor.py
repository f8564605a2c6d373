"""PriorityExecutor: waiting calls run by priority, then in order; the thread takes the next
one itself. Threads are held with events, never sleeps."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import pytest

from workers.models.executor import PriorityExecutor

WAIT_S = 5


def _blocked(
    executor: PriorityExecutor, priority: int = 0
) -> tuple[threading.Event, threading.Event]:
    """Occupy the executor's only general thread (a call of `priority` > 0 never goes to an
    express one) until the returned `release` is set."""
    started, release = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        release.wait(WAIT_S)

    executor.submit(priority, hold)
    assert started.wait(WAIT_S)
    return started, release


def test_waiting_calls_run_by_priority_then_in_order() -> None:
    executor = PriorityExecutor(1, "test")
    _, release = _blocked(executor)
    order: list[str] = []
    futures = [
        executor.submit(priority, order.append, name)
        for priority, name in ((2, "bulk-1"), (1, "standard"), (2, "bulk-2"), (0, "realtime"))
    ]
    release.set()
    for future in futures:
        future.result(WAIT_S)
    assert order == ["realtime", "standard", "bulk-1", "bulk-2"]
    executor.shutdown()


def test_results_and_errors_reach_the_future() -> None:
    executor = PriorityExecutor(2, "test")
    assert executor.submit(0, sum, [1, 2, 3]).result(WAIT_S) == 6
    with pytest.raises(ZeroDivisionError):
        executor.submit(0, divmod, 1, 0).result(WAIT_S)
    executor.shutdown()


def test_a_call_cancelled_before_it_starts_never_runs() -> None:
    executor = PriorityExecutor(1, "test")
    _, release = _blocked(executor)
    ran: list[str] = []
    cancelled = executor.submit(0, ran.append, "cancelled")
    later = executor.submit(1, ran.append, "later")
    assert cancelled.cancel()
    release.set()
    later.result(WAIT_S)
    assert ran == ["later"]
    executor.shutdown()


async def test_an_awaiting_task_cancelled_cancels_its_queued_call() -> None:
    executor = PriorityExecutor(1, "test")
    _, release = _blocked(executor)
    ran: list[str] = []
    waiter = asyncio.ensure_future(asyncio.wrap_future(executor.submit(0, ran.append, "x")))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.sleep(0)  # asyncio hands the cancel on to the queued call in a callback
    release.set()
    executor.shutdown()
    assert ran == []


def test_shutdown_runs_what_was_queued_then_refuses() -> None:
    executor = PriorityExecutor(1, "test")
    _, release = _blocked(executor)
    queued = executor.submit(5, lambda: "done")
    release.set()
    executor.shutdown()
    assert queued.result(0) == "done"
    executor.shutdown()  # idempotent
    with pytest.raises(RuntimeError, match="executor is shut down"):
        executor.submit(0, print)


def test_initializer_runs_on_each_thread_told_whether_it_is_express() -> None:
    seen: list[tuple[str, bool]] = []
    executor = PriorityExecutor(
        2,
        "init",
        express=1,
        initializer=lambda express: seen.append((threading.current_thread().name, express)),
    )
    executor.shutdown()
    assert sorted(seen) == [("init-0", False), ("init-1", False), ("init-express-0", True)]

    def broken(express: bool) -> None:
        raise OSError("no permission")

    executor = PriorityExecutor(1, "broken", initializer=broken)
    assert executor.submit(0, int, "7").result(WAIT_S) == 7
    executor.shutdown()


def test_a_top_call_starts_on_an_express_thread_while_every_general_thread_is_busy() -> None:
    executor = PriorityExecutor(1, "test", express=1)
    _, release = _blocked(executor, priority=1)
    ran_on = executor.submit(0, lambda: threading.current_thread().name).result(WAIT_S)
    assert ran_on == "test-express-0"
    release.set()
    executor.shutdown()


def test_an_express_thread_never_takes_a_lower_call() -> None:
    executor = PriorityExecutor(1, "test", express=1)
    _, release = _blocked(executor, priority=1)
    lower = executor.submit(1, lambda: threading.current_thread().name)
    # The express thread is idle, but the lower call waits for the general thread.
    assert executor.submit(0, lambda: "top").result(WAIT_S) == "top"
    assert not lower.done()
    release.set()
    assert lower.result(WAIT_S) == "test-0"
    executor.shutdown()


def test_top_calls_use_general_threads_too_when_the_express_ones_are_busy() -> None:
    executor = PriorityExecutor(1, "test", express=1)
    started, release = threading.Event(), threading.Event()

    def hold() -> str:
        started.set()
        release.wait(WAIT_S)
        return threading.current_thread().name

    first = executor.submit(0, hold)
    assert started.wait(WAIT_S)
    second = executor.submit(0, lambda: threading.current_thread().name)
    assert second.result(WAIT_S) == "test-0"
    release.set()
    assert first.result(WAIT_S) == "test-express-0"
    executor.shutdown()


def test_shutdown_waits_for_calls_queued_for_every_kind_of_thread() -> None:
    executor = PriorityExecutor(1, "test", express=1)
    _, release = _blocked(executor, priority=1)
    queued = [executor.submit(priority, lambda p=priority: p) for priority in (2, 0, 1, 0)]
    release.set()
    executor.shutdown()
    assert [f.result(0) for f in queued] == [2, 0, 1, 0]


def test_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        PriorityExecutor(0, "none")
    with pytest.raises(ValueError, match="express must be >= 0, got -1"):
        PriorityExecutor(1, "none", express=-1)


def test_calls_from_many_threads_all_run_with_one_wake_up_each() -> None:
    """A call wakes one idle thread that may take it: none is left waiting while a thread
    that could run it sleeps (a lost wake-up would leave a future unresolved here)."""
    executor = PriorityExecutor(2, "test", express=1)
    futures: list[concurrent.futures.Future[int]] = []
    lock = threading.Lock()

    def submit_many(offset: int) -> None:
        for i in range(500):
            future = executor.submit((offset + i) % 3, lambda n=i: n)
            with lock:
                futures.append(future)

    submitters = [threading.Thread(target=submit_many, args=(k,)) for k in range(4)]
    for thread in submitters:
        thread.start()
    for thread in submitters:
        thread.join(WAIT_S)
    done, pending = concurrent.futures.wait(futures, timeout=WAIT_S)
    assert not pending
    assert len(done) == 2000
    executor.shutdown()
