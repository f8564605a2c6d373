from __future__ import annotations

import asyncio
import itertools
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

import pytest

from workers.lanes.batcher import Batch, BatchWindow, LaneBatcher

_ids = itertools.count()


@dataclass(frozen=True)
class Req:
    lane: str = "standard"
    tenant: str = "acme"
    key: str = "m"
    rows: int = 1
    cost: float = 1.0
    n: int = field(default_factory=lambda: next(_ids))


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def _batcher(
    window: BatchWindow | Mapping[Hashable, BatchWindow],
    *,
    clock: FakeClock | None = None,
    min_share: Mapping[str, float] | None = None,
    weights: Mapping[str, float] | None = None,
) -> LaneBatcher[Req]:
    def window_of(key: Hashable) -> BatchWindow:
        return window if isinstance(window, BatchWindow) else window[key]

    return LaneBatcher(
        key=lambda r: r.key,
        lane_of=lambda r: r.lane,
        tenant_of=lambda r: r.tenant,
        size_of=lambda r: r.rows,
        cost_of=lambda r: r.cost,
        weight_of=(lambda t: weights[t]) if weights is not None else lambda _: 1.0,
        window_of=window_of,
        min_share=min_share,
        clock=clock or FakeClock(),
    )


async def _next(batcher: LaneBatcher[Req]) -> Batch[Req]:
    batch = await asyncio.wait_for(batcher.next_batch(), 1)
    assert batch is not None
    return batch


async def test_full_batch_is_released_without_waiting() -> None:
    batcher = _batcher(BatchWindow(max_batch_size=4, max_wait_ms=10_000))
    reqs = [Req() for _ in range(6)]
    for req in reqs:
        batcher.put(req)
    batch = await _next(batcher)
    assert batch.items == reqs[:4]
    assert (batch.size, batch.waited_s, batch.key) == (4, 0, "m")
    assert len(batcher) == 2


async def test_partial_batch_waits_for_the_window_from_its_first_item() -> None:
    clock = FakeClock()
    batcher = _batcher(BatchWindow(max_batch_size=8, max_wait_ms=50), clock=clock)
    first, second = Req(), Req(lane="realtime")
    batcher.put(first)
    waiter = asyncio.create_task(batcher.next_batch())
    clock.now += 0.030
    batcher.put(second)  # a later item, even of a higher lane, does not restart the window
    await _settle()
    assert not waiter.done()
    clock.now += 0.020
    batcher.tick()
    batch = await asyncio.wait_for(waiter, 1)
    assert batch is not None
    assert batch.items == [second, first]
    assert batch.waited_s == pytest.approx(0.050)


async def test_close_flushes_then_ends() -> None:
    batcher = _batcher(BatchWindow(max_batch_size=100, max_wait_ms=60_000))
    req = Req()
    batcher.put(req)
    waiter = asyncio.create_task(batcher.next_batch())
    await _settle()
    assert not waiter.done()
    batcher.close()
    batch = await asyncio.wait_for(waiter, 1)
    assert batch is not None
    assert batch.items == [req]
    assert await batcher.next_batch() is None
    with pytest.raises(RuntimeError, match="closed"):
        batcher.put(Req())


async def test_largest_preferred_size_queued_goes_at_once_and_the_rest_waits() -> None:
    clock = FakeClock()
    window = BatchWindow(max_batch_size=16, max_wait_ms=100, preferred_batch_sizes=(2, 4))
    batcher = _batcher(window, clock=clock)
    for _ in range(7):
        batcher.put(Req())
    assert (await _next(batcher)).size == 4
    assert (await _next(batcher)).size == 2  # 3 queued: the largest preferred <= 3 is 2
    waiter = asyncio.create_task(batcher.next_batch())
    await _settle()
    assert not waiter.done()  # 1 queued, under every preferred size: it waits its window
    clock.now += 0.1
    batcher.tick()
    batch = await asyncio.wait_for(waiter, 1)
    assert batch is not None
    assert batch.size == 1


async def test_an_item_larger_than_the_batch_goes_alone() -> None:
    batcher = _batcher(BatchWindow(max_batch_size=10, max_wait_ms=0))
    for rows in (4, 4, 4, 30, 1):
        batcher.put(Req(rows=rows))
    sizes = [[r.rows for r in (await _next(batcher)).items] for _ in range(4)]
    assert sizes == [[4, 4], [4], [30], [1]]


async def test_shape_buckets_never_share_a_batch_and_the_oldest_key_goes_first() -> None:
    clock = FakeClock()
    batcher = _batcher(BatchWindow(max_batch_size=3, max_wait_ms=5), clock=clock)
    short, long = ("bert", 1, "len<=64"), ("bert", 1, "len<=512")
    reqs = [Req(key=str(bucket)) for bucket in (long, short, long, short, long)]
    for req in reqs:
        batcher.put(req)
    clock.now += 1
    first, second = await _next(batcher), await _next(batcher)
    assert (first.key, first.items) == (str(long), [reqs[0], reqs[2], reqs[4]])
    assert (second.key, second.items) == (str(short), [reqs[1], reqs[3]])


async def test_per_key_windows_are_read_once_per_key() -> None:
    calls: list[Hashable] = []

    def window_of(key: Hashable) -> BatchWindow:
        calls.append(key)
        return BatchWindow(max_batch_size=1, max_wait_ms=0)

    batcher: LaneBatcher[Req] = LaneBatcher(
        key=lambda r: r.key,
        lane_of=lambda r: r.lane,
        tenant_of=lambda r: r.tenant,
        window_of=window_of,
    )
    for key in "aab":
        batcher.put(Req(key=key))
    for _ in range(3):
        await _next(batcher)
    assert calls == ["a", "b"]


async def test_a_realtime_item_behind_a_bulk_backlog_goes_in_the_next_batch() -> None:
    batcher = _batcher(BatchWindow(max_batch_size=8, max_wait_ms=1_000))
    for _ in range(1000):
        batcher.put(Req(lane="bulk"))
    urgent = Req(lane="realtime")
    batcher.put(urgent)
    batch = await _next(batcher)
    assert batch.items[0] == urgent
    assert [r.lane for r in batch.items] == ["realtime"] + ["bulk"] * 7


async def test_a_batch_is_filled_from_the_highest_lane_down() -> None:
    batcher = _batcher(BatchWindow(max_batch_size=7, max_wait_ms=1_000))
    for lane in ("bulk", "standard", "realtime"):
        for _ in range(3):
            batcher.put(Req(lane=lane))
    batch = await _next(batcher)
    assert [r.lane for r in batch.items] == ["realtime"] * 3 + ["standard"] * 3 + ["bulk"]
    assert batcher.queued_by_lane() == {"realtime": 0, "standard": 0, "bulk": 2}


async def test_a_backlogged_key_of_a_higher_lane_goes_before_an_older_lower_one() -> None:
    batcher = _batcher(BatchWindow(max_batch_size=2, max_wait_ms=0))
    batcher.put(Req(key="a", lane="bulk"))
    batcher.put(Req(key="b", lane="realtime"))
    assert [(await _next(batcher)).key for _ in range(2)] == ["b", "a"]


def _share(batcher: LaneBatcher[Req], lane: str) -> float:
    served = batcher.served_cost()
    return sum(c for (ln, _), c in served.items() if ln == lane) / sum(served.values())


async def _saturate(batcher: LaneBatcher[Req], batches: int, *, key: str = "m") -> None:
    """Serve `batches` batches while the realtime lane of `key` always has two batches' worth."""
    for _ in range(batches):
        while batcher.queued_by_lane()["realtime"] < 32:
            batcher.put(Req(lane="realtime", key=key, cost=1))
        await _next(batcher)


async def test_min_shares_hold_while_realtime_saturates() -> None:
    shares = {"standard": 0.1, "bulk": 0.05}
    batcher = _batcher(BatchWindow(max_batch_size=16, max_wait_ms=0), min_share=shares)
    for n in range(2000):
        batcher.put(Req(lane="standard", cost=1 + n % 7))
        batcher.put(Req(lane="bulk", cost=40))  # costlier than a batch earns it per batch
    await _saturate(batcher, 1000)
    served = batcher.served_cost()
    total = sum(served.values())
    for lane, share in shares.items():
        lane_cost = sum(c for (ln, _), c in served.items() if ln == lane)
        # Bound: one item of the lane plus the grant of one batch (16 rows of cost <= 40).
        assert lane_cost >= share * total - 40 - share * 16 * 40
        assert _share(batcher, lane) == pytest.approx(share, abs=0.01)  # a floor, not a gift


async def test_min_share_holds_across_keys_without_taking_more() -> None:
    """Realtime saturates model a; bulk waits on model b: it still gets its share, and its
    batches of b (filled work-conservingly) are paid for by waiting its turn again."""
    batcher = _batcher(BatchWindow(max_batch_size=16, max_wait_ms=0), min_share={"bulk": 0.05})
    for _ in range(3000):
        batcher.put(Req(lane="bulk", key="b", cost=1))
    await _saturate(batcher, 1000, key="a")
    assert _share(batcher, "bulk") == pytest.approx(0.05, abs=0.01)
    assert min(batcher.lane_credit().values()) >= -16  # a debt of one batch at most


async def test_an_idle_lane_banks_no_credit() -> None:
    batcher = _batcher(BatchWindow(max_batch_size=4, max_wait_ms=0), min_share={"bulk": 0.5})
    await _saturate(batcher, 50)
    assert batcher.lane_credit()["bulk"] == 0
    batcher.put(Req(lane="bulk"))
    batch = await _next(batcher)
    assert {r.lane for r in batch.items} == {"realtime"}  # earned nothing while idle
    assert batcher.lane_credit()["bulk"] == 2  # half of that batch's cost
    batch = await _next(batcher)
    assert batch.items[0].lane == "bulk"  # credit pass first, then realtime fills the room
    assert [r.lane for r in batch.items[1:]] == ["realtime"] * 3


async def test_tenants_of_a_lane_share_it_by_weight_and_a_new_weight_applies() -> None:
    weights = {"a": 1.0, "b": 1.0}
    batcher = _batcher(BatchWindow(max_batch_size=8, max_wait_ms=0), weights=weights)
    for _ in range(200):
        batcher.put(Req(tenant="a"))
        batcher.put(Req(tenant="b", cost=4))  # costlier items: fewer of them
    for _ in range(10):
        await _next(batcher)
    served = batcher.served_cost()
    assert abs(served["standard", "a"] - served["standard", "b"]) <= 8
    weights["a"] = 3.0
    for _ in range(10):
        await _next(batcher)
    after = batcher.served_cost()
    gained_a = after["standard", "a"] - served["standard", "a"]
    gained_b = after["standard", "b"] - served["standard", "b"]
    assert gained_a == pytest.approx(3 * gained_b, abs=12)


async def test_remove_if_drops_items_everywhere_and_keeps_the_counts() -> None:
    batcher = _batcher(BatchWindow(max_batch_size=10, max_wait_ms=0))
    reqs = [
        Req(key="a", lane="bulk", tenant="x"),
        Req(key="a", lane="realtime", tenant="y"),
        Req(key="b", lane="bulk", tenant="x"),
        Req(key="b", lane="bulk", tenant="y"),
    ]
    for req in reqs:
        batcher.put(req)
    assert batcher.remove_if(lambda r: r.tenant == "x") == 2
    assert len(batcher) == 2
    assert batcher.queued_by_lane() == {"realtime": 1, "standard": 0, "bulk": 1}
    assert batcher.queued_by_tenant() == {("realtime", "y"): 1, ("bulk", "y"): 1}
    first, second = await _next(batcher), await _next(batcher)
    assert [first.items, second.items] == [[reqs[1]], [reqs[3]]]
    assert batcher.queued_by_tenant() == {}
    assert batcher.served_cost() == {("realtime", "y"): 1, ("bulk", "y"): 1}


async def test_waited_s_is_the_oldest_item_of_the_key_even_when_served_later() -> None:
    clock = FakeClock()
    batcher = _batcher(BatchWindow(max_batch_size=1, max_wait_ms=0), clock=clock)
    batcher.put(Req(lane="bulk"))
    clock.now += 2
    batcher.put(Req(lane="realtime"))
    first = await _next(batcher)
    assert (first.items[0].lane, first.waited_s) == ("realtime", 2)


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="max_batch_size must be >= 1, got 0"):
        BatchWindow(0, 1)
    with pytest.raises(ValueError, match="max_wait_ms must be >= 0 and finite, got -1"):
        BatchWindow(1, -1)
    with pytest.raises(ValueError, match=r"preferred_batch_sizes must be in 1..max_batch_size"):
        BatchWindow(4, 1, (2, 8))
    window = BatchWindow(4, 1)
    with pytest.raises(ValueError, match="min_share must sum to <= 1"):
        _batcher(window, min_share={"standard": 0.6, "bulk": 0.6})
    with pytest.raises(ValueError, match="min_share lane must be one of"):
        _batcher(window, min_share={"gold": 0.1})
    with pytest.raises(ValueError, match=r"lane must be one of .*, got 'gold'"):
        _batcher(window).put(Req(lane="gold"))


async def test_a_row_cap_shrinks_batches_while_it_applies() -> None:
    cap: dict[Hashable, int | None] = {"m": 3}
    batcher: LaneBatcher[Req] = LaneBatcher(
        key=lambda r: r.key,
        lane_of=lambda r: r.lane,
        tenant_of=lambda r: r.tenant,
        size_of=lambda r: r.rows,
        window_of=lambda _: BatchWindow(8, 10_000, preferred_batch_sizes=(2, 8)),
        row_cap_of=cap.get,
        clock=FakeClock(),
    )
    for _ in range(12):
        batcher.put(Req())
    # Capped at 3 rows: ready at 3 (no waiting for 8), preferred sizes above the cap ignored.
    assert (await _next(batcher)).size == 3
    cap["m"] = None
    assert (await _next(batcher)).size == 8


# ---- admission by batch slots (the express slot of the realtime lane) ------------------------


def _only_realtime(lane: str) -> str | None:
    return "realtime" if lane == "realtime" else None


def _any(lane: str) -> str | None:
    return "bulk"


async def test_a_refused_key_waits_and_an_admitted_one_goes() -> None:
    batcher = _batcher({"a": BatchWindow(2, 0), "b": BatchWindow(2, 0)})
    bulk, realtime = Req(lane="bulk", key="a"), Req(lane="realtime", key="b")
    batcher.put(bulk)
    batcher.put(realtime)
    batch = await asyncio.wait_for(batcher.next_batch(admit=_only_realtime), 1)
    assert batch is not None
    assert (batch.items, batch.lane) == ([realtime], "realtime")
    waiting = asyncio.create_task(batcher.next_batch(admit=_only_realtime))
    await _settle()
    assert not waiting.done()  # the bulk key is ready but refused: no batch, no busy loop
    waiting.cancel()
    batch = await asyncio.wait_for(batcher.next_batch(admit=_any), 1)
    assert batch is not None
    assert (batch.items, batch.lane) == ([bulk], "bulk")


async def test_an_express_batch_takes_top_lane_rows_only_and_goes_at_once() -> None:
    batcher = _batcher(BatchWindow(8, 10_000))
    bulk = [Req(lane="bulk") for _ in range(8)]
    realtime = Req(lane="realtime")
    for req in [*bulk, realtime]:
        batcher.put(req)
    batch = await asyncio.wait_for(batcher.next_batch(admit=_only_realtime), 1)
    assert batch is not None
    assert batch.items == [realtime]
    batch = await asyncio.wait_for(batcher.next_batch(admit=_any), 1)
    assert batch is not None
    assert batch.items == bulk  # the general slot's batch fills from every lane


async def test_a_tick_wakes_a_wait_refused_by_admit() -> None:
    batcher = _batcher(BatchWindow(4, 0))
    batcher.put(Req(lane="bulk"))
    slot_free = False
    waiting = asyncio.create_task(batcher.next_batch(admit=lambda _: "bulk" if slot_free else None))
    await _settle()
    assert not waiting.done()
    slot_free = True
    batcher.tick()
    batch = await asyncio.wait_for(waiting, 1)
    assert batch is not None
    assert batch.lane == "bulk"


async def test_closed_with_refused_work_waits_until_admitted_then_drains() -> None:
    batcher = _batcher(BatchWindow(4, 10_000))
    req = Req(lane="standard")
    batcher.put(req)
    batcher.close()
    admitted = False
    waiting = asyncio.create_task(batcher.next_batch(admit=lambda _: "bulk" if admitted else None))
    await _settle()
    assert not waiting.done()  # closed, but its queued work is not dropped
    admitted = True
    batcher.tick()
    batch = await asyncio.wait_for(waiting, 1)
    assert batch is not None
    assert batch.items == [req]
    assert await asyncio.wait_for(batcher.next_batch(admit=_any), 1) is None


async def test_a_batch_names_its_keys_highest_lane() -> None:
    batcher = _batcher(BatchWindow(3, 0))
    batcher.put(Req(lane="bulk"))
    batcher.put(Req(lane="standard"))
    batch = await _next(batcher)
    assert batch.lane == "standard"
