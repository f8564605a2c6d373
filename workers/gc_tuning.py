"""The cyclic garbage collector of a long-lived process (`worker.gc_threshold`,
`gateway.gc_threshold`)."""

from __future__ import annotations

import gc


def tune_garbage_collection(threshold: int) -> None:
    """Young collections every `threshold` allocations (0: CPython's own); and what start-up
    built moves to the permanent generation, which the collector no longer walks (it lives
    as long as the process anyway)."""
    if threshold:
        gc.set_threshold(threshold, *gc.get_threshold()[1:])
    gc.collect()
    gc.freeze()
