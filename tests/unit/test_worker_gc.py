"""`worker.gc_threshold`: the worker's collector settings, applied in this process and undone."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from workers.service import _tune_garbage_collection
from workers.settings import WorkerSettings


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_the_threshold_is_raised_and_start_up_objects_are_frozen(restored_gc: None) -> None:
    survivor = [object() for _ in range(100)]
    _tune_garbage_collection(WorkerSettings().gc_threshold)
    assert gc.get_threshold()[0] == 50_000
    assert gc.get_freeze_count() >= len(survivor)


def test_zero_keeps_the_interpreters_threshold(restored_gc: None) -> None:
    before = gc.get_threshold()
    _tune_garbage_collection(0)
    assert gc.get_threshold() == before
