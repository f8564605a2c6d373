"""`worker.gc_threshold`, `gateway.gc_threshold`: a process's collector settings, applied in
this process and undone."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from workers.gc_tuning import tune_garbage_collection
from workers.settings import GatewaySettings, WorkerSettings


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_the_threshold_is_raised_and_start_up_objects_are_frozen(restored_gc: None) -> None:
    survivor = [object() for _ in range(100)]
    tune_garbage_collection(WorkerSettings().gc_threshold)
    assert gc.get_threshold()[0] == 50_000
    assert gc.get_freeze_count() >= len(survivor)


def test_zero_keeps_the_interpreters_threshold(restored_gc: None) -> None:
    before = gc.get_threshold()
    tune_garbage_collection(0)
    assert gc.get_threshold() == before


def test_the_gateway_raises_it_as_the_workers_do(restored_gc: None) -> None:
    tune_garbage_collection(GatewaySettings().gc_threshold)
    assert gc.get_threshold()[0] == WorkerSettings().gc_threshold == 50_000
