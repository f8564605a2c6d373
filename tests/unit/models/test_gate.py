"""PriorityGate: runs waiting for the model enter by priority, then arrival; no sleeps."""

from __future__ import annotations

import asyncio

import pytest

from workers.models.gate import PriorityGate


async def _enter(gate: PriorityGate, priority: int, name: str, order: list[str]) -> None:
    async with gate.hold(priority):
        order.append(name)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_waiters_enter_by_priority_then_arrival() -> None:
    gate = PriorityGate(1)
    order: list[str] = []
    await gate.acquire()  # a bulk run in progress
    waiters = [
        asyncio.create_task(_enter(gate, priority, name, order))
        for priority, name in ((2, "bulk-1"), (1, "standard"), (2, "bulk-2"), (0, "realtime"))
    ]
    await _settle()
    assert order == []
    assert gate.waiting == 4
    gate.release()
    await asyncio.gather(*waiters)
    assert order == ["realtime", "standard", "bulk-1", "bulk-2"]


async def test_a_free_slot_is_taken_at_once_and_slots_bound_holders() -> None:
    gate = PriorityGate(2)
    await gate.acquire(5)
    await gate.acquire(5)
    third = asyncio.create_task(gate.acquire(0))
    await _settle()
    assert not third.done()
    gate.release()
    await asyncio.wait_for(third, 1)
    assert gate.waiting == 0


async def test_a_cancelled_waiter_is_skipped_and_loses_no_slot() -> None:
    gate = PriorityGate(1)
    order: list[str] = []
    await gate.acquire()
    cancelled = asyncio.create_task(_enter(gate, 0, "cancelled", order))
    later = asyncio.create_task(_enter(gate, 1, "later", order))
    await _settle()
    cancelled.cancel()
    await _settle()
    gate.release()
    await asyncio.wait_for(later, 1)
    assert order == ["later"]
    await asyncio.wait_for(gate.acquire(), 1)  # the slot came back after "later"


async def test_a_waiter_cancelled_as_it_is_admitted_hands_the_slot_on() -> None:
    gate = PriorityGate(1)
    order: list[str] = []
    await gate.acquire()
    first = asyncio.create_task(gate.acquire(0))
    second = asyncio.create_task(_enter(gate, 1, "second", order))
    await _settle()
    gate.release()  # admits `first`, which is cancelled before it runs
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)
    assert order == ["second"]


def test_slots_must_be_positive() -> None:
    with pytest.raises(ValueError, match="slots must be >= 1, got 0"):
        PriorityGate(0)
