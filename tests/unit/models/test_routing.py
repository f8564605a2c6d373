"""Canary routing: the configured share within 2 points over 10,000 tasks, stable per task."""

from __future__ import annotations

import random
import uuid

import pytest

from workers.models.routing import RoutingTable, task_fraction


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.25, 0.5])
def test_canary_split_is_within_two_points_over_ten_thousand_tasks(fraction: float) -> None:
    table = RoutingTable(current=1, canary=2, canary_fraction=fraction)
    rng = random.Random(0)  # fixed ids: the bound holds on every run, not nearly every one
    ids = [uuid.UUID(int=rng.getrandbits(128)).hex for _ in range(10_000)]

    share = sum(table.route(i) == 2 for i in ids) / len(ids)

    assert abs(share - fraction) <= 0.02, share


def test_the_same_task_id_always_routes_to_the_same_version() -> None:
    table = RoutingTable(current=1, canary=2, canary_fraction=0.3)
    ids = [f"task-{i}" for i in range(1000)]

    first = [table.route(i) for i in ids]

    assert [RoutingTable(1, 2, 0.3).route(i) for i in ids] == first
    assert task_fraction("task-7") == task_fraction("task-7")


def test_a_larger_canary_share_keeps_the_tasks_it_already_had() -> None:
    ids = [f"t{i}" for i in range(2000)]
    small = {i for i in ids if RoutingTable(1, 2, 0.1).route(i) == 2}
    large = {i for i in ids if RoutingTable(1, 2, 0.4).route(i) == 2}

    assert small <= large


def test_promotion_ends_the_canary_and_without_removes_roles() -> None:
    table = RoutingTable(current=1, canary=2, canary_fraction=0.2, shadow=3, shadow_fraction=0.5)

    assert table.promoted(2) == RoutingTable(1, None, 0.0, 3, 0.5).promoted(2)
    assert table.promoted(2).route("anything") == 2
    assert table.without(3).shadow is None
    assert table.versions() == {1, 2, 3}


def test_fractions_outside_zero_to_one_are_refused() -> None:
    with pytest.raises(ValueError, match="canary_fraction must be within"):
        RoutingTable(1, 2, 1.5)
