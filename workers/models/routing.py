"""Which model version a task runs on: its pin, else the policy (latest or a canary split).

The canary split hashes the task id, not a random draw, so a task that is retried or
redelivered lands on the same version every time, on every worker.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

_SCALE = float(1 << 64)


def task_fraction(task_id: str) -> float:
    """A stable point in [0, 1) for a task id (BLAKE2b, so equal across processes)."""
    digest = hashlib.blake2b(task_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


@dataclass(frozen=True)
class RoutingTable:
    """One model's routing state; replaced whole on every change, so readers see it atomically."""

    current: int
    """The version unpinned tasks run on (outside the canary's share)."""
    canary: int | None = None
    canary_fraction: float = 0.0
    """Share of unpinned tasks the canary takes, chosen by task-id hash."""
    shadow: int | None = None
    shadow_fraction: float = 0.0
    """Share of batches the shadow also runs on, its outputs compared and dropped."""

    def __post_init__(self) -> None:
        for name in ("canary_fraction", "shadow_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")

    def route(self, task_id: str) -> int:
        """The version an unpinned task runs on."""
        if self.canary is not None and task_fraction(task_id) < self.canary_fraction:
            return self.canary
        return self.current

    def promoted(self, version: int) -> RoutingTable:
        """`version` serves every unpinned task; a canary or shadow of it is done."""
        return replace(
            self,
            current=version,
            canary=None if self.canary == version else self.canary,
            canary_fraction=0.0 if self.canary == version else self.canary_fraction,
            shadow=None if self.shadow == version else self.shadow,
            shadow_fraction=0.0 if self.shadow == version else self.shadow_fraction,
        )

    def without(self, version: int) -> RoutingTable:
        """The table once `version` stops being canary or shadow (never the current one)."""
        table = self
        if table.canary == version:
            table = replace(table, canary=None, canary_fraction=0.0)
        if table.shadow == version:
            table = replace(table, shadow=None, shadow_fraction=0.0)
        return table

    def versions(self) -> set[int]:
        """Versions this table sends work to."""
        return {v for v in (self.current, self.canary, self.shadow) if v is not None}
