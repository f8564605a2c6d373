from __future__ import annotations

import asyncio

import pytest

from workers.batching import Batcher


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_full_batch_is_released_without_waiting() -> None:
    clock = FakeClock()
    batcher: Batcher[int] = Batcher(4, max_wait_ms=10_000, clock=clock)
    for i in range(6):
        batcher.put(i)
    batch = await batcher.next_batch()
    assert batch is not None
    assert batch.items == [0, 1, 2, 3]
    assert batch.waited_s == 0


async def test_partial_batch_waits_for_the_window_from_its_first_item() -> None:
    clock = FakeClock()
    batcher: Batcher[str] = Batcher(8, max_wait_ms=50, clock=clock)
    batcher.put("a")
    waiter = asyncio.create_task(batcher.next_batch())
    clock.now += 0.030
    batcher.put("b")  # a later item does not restart the window
    await _settle()
    assert not waiter.done()
    clock.now += 0.020
    batcher.tick()
    batch = await asyncio.wait_for(waiter, 1)
    assert batch is not None
    assert batch.items == ["a", "b"]
    assert batch.waited_s == pytest.approx(0.050)


async def test_sizes_count_rows_and_an_oversized_item_goes_alone() -> None:
    batcher: Batcher[int] = Batcher(10, max_wait_ms=0, size_of=lambda n: n)
    for rows in (4, 4, 4, 30, 1):
        batcher.put(rows)
    sizes = []
    for _ in range(4):
        batch = await batcher.next_batch()
        assert batch is not None
        sizes.append(batch.items)
    assert sizes == [[4, 4], [4], [30], [1]]


async def test_keys_never_share_a_batch_and_oldest_key_goes_first() -> None:
    clock = FakeClock()
    batcher: Batcher[tuple[str, int]] = Batcher(3, max_wait_ms=5, key=lambda x: x[0], clock=clock)
    batcher.put(("m1", 0))
    batcher.put(("m2", 0))
    batcher.put(("m1", 1))
    clock.now += 1
    first = await batcher.next_batch()
    second = await batcher.next_batch()
    assert first is not None
    assert second is not None
    assert (first.key, [i for _, i in first.items]) == ("m1", [0, 1])
    assert (second.key, [i for _, i in second.items]) == ("m2", [0])


async def test_close_flushes_then_ends() -> None:
    clock = FakeClock()
    batcher: Batcher[int] = Batcher(100, max_wait_ms=60_000, clock=clock)
    batcher.put(1)
    waiter = asyncio.create_task(batcher.next_batch())
    await _settle()
    assert not waiter.done()
    batcher.close()
    batch = await asyncio.wait_for(waiter, 1)
    assert batch is not None
    assert batch.items == [1]
    assert await batcher.next_batch() is None
    with pytest.raises(RuntimeError):
        batcher.put(2)


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="max_batch_size must be >= 1, got 0"):
        Batcher(0, 1)
    with pytest.raises(ValueError, match="max_wait_ms must be >= 0, got -1"):
        Batcher(1, -1)


async def test_remove_if_drops_queued_items_of_lost_partitions() -> None:
    batcher: Batcher[tuple[str, int]] = Batcher(10, max_wait_ms=0, key=lambda x: x[0])
    for item in [("a", 1), ("a", 2), ("b", 1), ("b", 3)]:
        batcher.put(item)
    assert batcher.remove_if(lambda x: x[1] == 1) == 2
    assert len(batcher) == 2
    first = await batcher.next_batch()
    second = await batcher.next_batch()
    assert first is not None
    assert second is not None
    assert [first.items, second.items] == [[("a", 2)], [("b", 3)]]
