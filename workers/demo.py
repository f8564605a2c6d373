"""`conveyor demo`: placeholder replaced below."""

from __future__ import annotations

from workers.settings import Settings


def run_demo(settings: Settings, *, requests: int, keep_stack: bool) -> int:
    raise NotImplementedError
