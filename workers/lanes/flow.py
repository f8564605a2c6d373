"""Which input partitions intake pauses: bounded buffers per partition, and lanes yielding.

Each partition may have `max_in_flight / partitions` records unfinished in the worker. The
bound is per partition, not per worker, because lane topics are keyed by tenant
(`lanes.affinity`): a partition whose records are served faster is read again sooner, so fair
sharing reaches back into Kafka instead of stopping at whatever one FIFO read let in.

Kafka serves a consumer's partitions in no useful order, so priority starts here too: while a
higher lane has work queued in the worker, a lower lane's partitions pause once that lane
holds `low_lane_reserve` records, and its backlog waits in Kafka instead of in front of the
higher lane. The reserve is what the scheduler's minimum shares are served from, so a low
lane slows down but never stops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from aiokafka import TopicPartition

from workers.names import LANES

# A worker holding many partitions still reads each in useful chunks.
_MIN_PER_PARTITION = 16
NO_LANE = "-"
"""The lane of a topic that is no lane's (preprocess reads one requests topic)."""


class FlowControl:
    def __init__(
        self,
        lane_of_topic: Callable[[str], str | None],
        max_in_flight: int,
        low_lane_reserve: int,
        lanes: Sequence[str] = LANES,
    ) -> None:
        if max_in_flight < 1 or low_lane_reserve < 1:
            raise ValueError("max_in_flight and low_lane_reserve must be >= 1")
        self._lane_of_topic = lane_of_topic
        self.max_in_flight = max_in_flight
        self.low_lane_reserve = low_lane_reserve
        self._rank = {lane: i for i, lane in enumerate(lanes)}

    def lane_of(self, tp: TopicPartition) -> str:
        return self._lane_of_topic(tp.topic) or NO_LANE

    def to_pause(
        self,
        assignment: Iterable[TopicPartition],
        unfinished: Mapping[TopicPartition, int],
        queued_by_lane: Mapping[str, int],
    ) -> set[TopicPartition]:
        """The partitions that should be paused now; every other one should be read."""
        partitions = list(assignment)
        if not partitions:
            return set()
        per_partition = max(_MIN_PER_PARTITION, self.max_in_flight // len(partitions))
        # The highest lane with work waiting in the worker: every lane below it yields.
        busy = [
            self._rank[lane] for lane, n in queued_by_lane.items() if n > 0 and lane in self._rank
        ]
        highest_busy = min(busy, default=len(self._rank))
        yielding = {
            lane
            for lane, rank in self._rank.items()
            if rank > highest_busy and queued_by_lane.get(lane, 0) >= self.low_lane_reserve
        }
        return {
            tp
            for tp in partitions
            if unfinished.get(tp, 0) >= per_partition or self.lane_of(tp) in yielding
        }
