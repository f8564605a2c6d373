"""BatchSlots: general slots for any batch, express ones for top-lane rows only."""

from __future__ import annotations

import pytest

from workers.lanes.slots import BatchSlots


def test_general_slots_go_first_then_express_for_the_top_lane_only() -> None:
    slots = BatchSlots(general=2, express=1)
    assert slots.admit("bulk") == "bulk"  # a general slot: rows of every lane
    assert slots.take("bulk") == "general"
    assert slots.take("realtime") == "general"
    assert slots.admit("bulk") is None
    assert slots.admit("standard") is None
    assert slots.admit("realtime") == "realtime"  # express: realtime rows only
    assert slots.take("realtime") == "express"
    assert slots.admit("realtime") is None
    assert slots.in_flight == 3
    with pytest.raises(RuntimeError, match="no batch slot free for a batch of lane 'bulk'"):
        slots.take("bulk")


def test_given_back_slots_admit_again() -> None:
    slots = BatchSlots(general=1, express=1)
    general, express = slots.take("realtime"), slots.take("realtime")
    slots.give_back(general)
    assert slots.admit("bulk") == "bulk"
    slots.give_back(express)
    assert slots.in_flight == 0
    with pytest.raises(RuntimeError, match="no express slot is taken"):
        slots.give_back("express")


def test_no_express_slots_means_plain_bound() -> None:
    slots = BatchSlots(general=1)
    slots.take("realtime")
    assert slots.admit("realtime") is None


@pytest.mark.parametrize(("general", "express"), [(0, 1), (1, -1)])
def test_bad_counts_are_refused(general: int, express: int) -> None:
    with pytest.raises(ValueError, match="slots must be >= "):
        BatchSlots(general, express)
