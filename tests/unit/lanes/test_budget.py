"""The latency budget: batches capped by measured time per row while realtime is active."""

from __future__ import annotations

from workers.lanes.budget import LatencyBudget


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_no_cap_until_the_top_lane_is_seen_and_a_batch_measured() -> None:
    clock = Clock()
    budget = LatencyBudget(20, active_s=1.0, clock=clock)
    budget.ran("k", rows=10, seconds=0.05)
    assert budget.row_cap("k") is None  # no realtime work yet
    budget.saw("bulk")
    assert budget.row_cap("k") is None
    budget.saw("realtime")
    assert budget.row_cap("k") == 4  # 5 ms a row: 4 rows in 20 ms
    assert budget.row_cap("other") is None  # never measured


def test_the_cap_lifts_when_the_top_lane_goes_quiet() -> None:
    clock = Clock()
    budget = LatencyBudget(20, active_s=1.0, clock=clock)
    budget.ran("k", rows=1, seconds=0.1)
    budget.saw("realtime")
    assert budget.row_cap("k") == 1  # slower than the budget: one row, never zero
    clock.now += 1.5
    assert budget.row_cap("k") is None


def test_the_estimate_follows_the_model_smoothly() -> None:
    clock = Clock()
    budget = LatencyBudget(100, active_s=1.0, clock=clock)
    budget.saw("realtime")
    budget.ran("k", rows=10, seconds=0.1)  # 10 ms a row
    budget.ran("k", rows=10, seconds=0.2)  # one slow batch moves it a fifth of the way
    assert budget.row_cap("k") == 8  # 100 ms / 12 ms


def test_zero_budget_turns_it_off() -> None:
    budget = LatencyBudget(0, active_s=1.0)
    budget.saw("realtime")
    budget.ran("k", rows=10, seconds=1.0)
    assert budget.row_cap("k") is None
