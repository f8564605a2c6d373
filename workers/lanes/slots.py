"""How many batches a stage works on at once, with an express slot for the top lane.

A stage keeps `batches_in_flight` batches going so host work (ledger reads, encoding,
delivery) overlaps the model run. With every slot taken by bulk batches, a realtime task
could not even form its batch until one of them finished, and would then queue behind the
next one already formed. An express slot, usable only by a batch whose highest lane is the
top lane, lets it form at once; the model's priority gate then runs it right after the run
in progress (`workers.models.gate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from workers.names import LANES

SlotKind = Literal["general", "express"]


class BatchSlots:
    def __init__(self, general: int, express: int = 0, lanes: Sequence[str] = LANES) -> None:
        if general < 1:
            raise ValueError(f"general slots must be >= 1, got {general}")
        if express < 0:
            raise ValueError(f"express slots must be >= 0, got {express}")
        self.general = general
        self.express = express
        self.lanes = tuple(lanes)
        self.top_lane = self.lanes[0]
        self._used: dict[SlotKind, int] = {"general": 0, "express": 0}

    @property
    def in_flight(self) -> int:
        return self._used["general"] + self._used["express"]

    def admit(self, lane: str) -> str | None:
        """The lowest lane a batch whose highest lane is `lane` may take rows from now; None:
        no slot. A general slot takes any lane; an express batch only top-lane rows: it is
        room beyond `batches_in_flight`, and lower lanes' rows would only slow it down."""
        if self._used["general"] < self.general:
            return self.lanes[-1]
        if lane == self.top_lane and self._used["express"] < self.express:
            return self.top_lane
        return None

    def take(self, lane: str) -> SlotKind:
        """A slot for a batch whose highest lane is `lane` (general ones first)."""
        if self._used["general"] < self.general:
            kind: SlotKind = "general"
        elif self.admit(lane) is not None:
            kind = "express"
        else:
            raise RuntimeError(f"no batch slot free for a batch of lane {lane!r}")
        self._used[kind] += 1
        return kind

    def give_back(self, kind: SlotKind) -> None:
        if self._used[kind] < 1:
            raise RuntimeError(f"no {kind} slot is taken")
        self._used[kind] -= 1
