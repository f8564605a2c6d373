from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.lanes.drr import DeficitRoundRobin


def _equal(_: str) -> float:
    return 1.0


def _fill(drr: DeficitRoundRobin[str], tenant: str, count: int, cost: float = 1) -> None:
    for i in range(count):
        drr.put(tenant, f"{tenant}{i}", cost=cost)


def test_tenants_take_turns_and_each_keeps_its_order() -> None:
    drr: DeficitRoundRobin[str] = DeficitRoundRobin()
    _fill(drr, "a", 3)
    _fill(drr, "b", 2)
    assert drr.take(10, _equal) == ["a0", "b0", "a1", "b1", "a2"]
    assert len(drr) == 0


def test_weights_set_items_per_round() -> None:
    drr: DeficitRoundRobin[str] = DeficitRoundRobin()
    _fill(drr, "a", 6)
    _fill(drr, "b", 6)
    weights = {"a": 2.0, "b": 1.0}
    assert drr.take(6, weights.__getitem__) == ["a0", "a1", "b0", "a2", "a3", "b1"]


def test_a_visit_cut_by_the_batch_boundary_resumes_without_a_second_quantum() -> None:
    drr: DeficitRoundRobin[str] = DeficitRoundRobin()
    _fill(drr, "a", 4)
    _fill(drr, "b", 4)
    weights = {"a": 3.0, "b": 1.0}
    served = drr.take(2, weights.__getitem__) + drr.take(2, weights.__getitem__)
    assert served == ["a0", "a1", "a2", "b0"]


@settings(max_examples=50, deadline=None)
@given(
    weights=st.lists(st.integers(1, 4), min_size=1, max_size=5),
    costs=st.lists(st.integers(1, 8), min_size=40, max_size=40),
    cuts=st.lists(st.integers(1, 7), min_size=1, max_size=40),
)
def test_cutting_the_service_into_batches_changes_nothing(
    weights: list[int], costs: list[int], cuts: list[int]
) -> None:
    def build() -> DeficitRoundRobin[int]:
        drr: DeficitRoundRobin[int] = DeficitRoundRobin()
        for i, cost in enumerate(costs):
            drr.put(f"t{i % len(weights)}", i, cost=cost)
        return drr

    def weight_of(tenant: str) -> float:
        return weights[int(tenant[1:])]

    whole = build().take(len(costs), weight_of)
    drr = build()
    pieces: list[int] = []
    for cut in itertools.cycle(cuts):
        if not len(drr):
            break
        pieces += drr.take(cut, weight_of)
    assert pieces == whole


def test_an_emptied_tenant_loses_its_deficit() -> None:
    drr: DeficitRoundRobin[str] = DeficitRoundRobin(base_quantum=10)
    drr.put("a", "a0", cost=1)  # a's visit grants 10, spends 1: 9 would be left over
    drr.put("b", "b0", cost=10)
    assert drr.take(1, _equal) == ["a0"]
    drr.put("a", "a1", cost=10)
    drr.put("a", "a2", cost=10)
    # Had a kept its 9, it would serve a1 and then a2 (19 >= 10) in its next visit.
    assert drr.take(10, _equal) == ["b0", "a1", "a2"]
    assert drr.served_cost_by_tenant == {"a": 21, "b": 10}


def test_capacity_counts_sizes_and_an_oversized_item_goes_alone_only_if_allowed() -> None:
    drr: DeficitRoundRobin[str] = DeficitRoundRobin()
    drr.put("a", "a0", cost=1, size=3)
    drr.put("a", "a1", cost=1, size=3)
    drr.put("b", "b0", cost=1, size=9)
    assert drr.take(4, _equal) == ["a0"]
    assert drr.take(4, _equal) == []  # b0 is next and does not fit; a1 does not jump it
    assert drr.take(4, _equal, allow_oversized=True) == ["b0"]
    assert drr.take(4, _equal) == ["a1"]


def test_max_cost_caps_what_one_take_serves() -> None:
    drr: DeficitRoundRobin[str] = DeficitRoundRobin()
    for i, cost in enumerate((2, 2, 5)):
        drr.put("a", f"a{i}", cost=cost)
    assert drr.take(10, _equal, max_cost=4.5) == ["a0", "a1"]
    assert drr.peek(_equal) == "a2"
    assert drr.take(10, _equal, max_cost=4.5) == []
    assert drr.take(10, _equal, max_cost=5) == ["a2"]


def test_a_weight_changed_at_runtime_applies_from_the_next_visit() -> None:
    drr: DeficitRoundRobin[str] = DeficitRoundRobin()
    _fill(drr, "a", 20)
    _fill(drr, "b", 20)
    weights = {"a": 1.0, "b": 1.0}
    assert drr.take(4, weights.__getitem__) == ["a0", "b0", "a1", "b1"]
    weights["a"] = 3.0
    assert drr.take(8, weights.__getitem__) == ["a2", "a3", "a4", "b2", "a5", "a6", "a7", "b3"]


def test_remove_if_drops_items_and_tenants_left_empty() -> None:
    drr: DeficitRoundRobin[str] = DeficitRoundRobin()
    _fill(drr, "a", 3)
    _fill(drr, "b", 2)
    assert drr.remove_if(lambda item: item.startswith("b") or item == "a1") == 3
    assert len(drr) == 2
    assert drr.queued_by_tenant() == {"a": 2}
    assert drr.take(10, _equal) == ["a0", "a2"]


def test_rejects_bad_costs_and_weights() -> None:
    drr: DeficitRoundRobin[str] = DeficitRoundRobin()
    with pytest.raises(ValueError, match="cost must be >= 0 and finite, got -1"):
        drr.put("a", "x", cost=-1)
    with pytest.raises(ValueError, match="base_quantum must be > 0 and finite, got 0"):
        DeficitRoundRobin(base_quantum=0)
    drr.put("a", "x", cost=1)
    with pytest.raises(ValueError, match="weight of tenant 'a' must be > 0 and finite, got 0"):
        drr.take(1, lambda _: 0.0)


def _assert_fair(drr: DeficitRoundRobin[int], weights: dict[str, int], bound: float) -> None:
    served = drr.served_cost_by_tenant
    per_weight = [served.get(tenant, 0.0) / weight for tenant, weight in weights.items()]
    assert max(per_weight) - min(per_weight) < bound


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.integers(1, 5), min_size=2, max_size=8),
    costs=st.lists(st.integers(1, 64), min_size=1, max_size=64),
    cuts=st.lists(st.integers(1, 32), min_size=1, max_size=16),
)
def test_backlogged_tenants_get_cost_in_proportion_to_weight(
    weights: list[int], costs: list[int], cuts: list[int]
) -> None:
    """Bound: served cost / weight differs pairwise by < quantum + max_cost / min_weight,
    at every batch boundary, for as long as every tenant stays backlogged."""
    by_tenant = {f"t{i}": weight for i, weight in enumerate(weights)}
    drr: DeficitRoundRobin[int] = DeficitRoundRobin()
    for n in range(150):
        for i, tenant in enumerate(by_tenant):
            # Each tenant has its own cost pattern, some much costlier than others.
            drr.put(tenant, n, cost=costs[(n * (i + 1) + i) % len(costs)])
    bound = drr.base_quantum + max(costs) / min(weights)
    for cut in itertools.cycle(cuts):
        drr.take(cut, by_tenant.__getitem__)
        if len(drr.queued_by_tenant()) < len(by_tenant):
            break
        _assert_fair(drr, by_tenant, bound)


def test_a_tenant_sending_costly_items_gets_no_more_than_its_share() -> None:
    drr: DeficitRoundRobin[int] = DeficitRoundRobin()
    for n in range(1000):
        drr.put("long", n, cost=64)
        drr.put("short", n, cost=1)
    for _ in range(30):
        drr.take(8, _equal)
        served = drr.served_cost_by_tenant
        assert abs(served.get("long", 0) - served.get("short", 0)) < 64 + 64
    queued = drr.queued_by_tenant()
    served_items = {tenant: 1000 - queued[tenant] for tenant in queued}
    assert served_items["short"] > 30 * served_items["long"]
