"""Flow control: per-partition buffers, and lower lanes yielding to a busy higher lane."""

from __future__ import annotations

from aiokafka import TopicPartition

from workers.lanes.flow import FlowControl
from workers.names import Topics

TOPICS = Topics("t")


def _partitions(lane: str, count: int = 2) -> list[TopicPartition]:
    return [TopicPartition(TOPICS.preprocessed_of(lane), p) for p in range(count)]


REALTIME, STANDARD, BULK = _partitions("realtime"), _partitions("standard"), _partitions("bulk")
ALL = REALTIME + STANDARD + BULK


def _flow(max_in_flight: int = 600, reserve: int = 10) -> FlowControl:
    return FlowControl(TOPICS.lane_of, max_in_flight, reserve)


def test_nothing_pauses_while_buffers_have_room() -> None:
    assert _flow().to_pause(ALL, {tp: 5 for tp in ALL}, {"bulk": 100}) == set()


def test_a_full_partition_pauses_alone() -> None:
    # 600 records over 6 partitions: 100 each.
    unfinished = {BULK[0]: 100, BULK[1]: 99}
    assert _flow().to_pause(ALL, unfinished, {}) == {BULK[0]}


def test_lower_lanes_yield_to_a_busy_higher_lane_beyond_their_reserve() -> None:
    queued = {"realtime": 1, "standard": 10, "bulk": 9}
    # standard holds its reserve: it pauses; bulk has less and keeps reading.
    assert _flow().to_pause(ALL, {}, queued) == set(STANDARD)
    queued = {"standard": 3, "bulk": 50}
    assert _flow().to_pause(ALL, {}, queued) == set(BULK)


def test_the_highest_lane_never_yields() -> None:
    queued = {"realtime": 1000, "standard": 1000, "bulk": 1000}
    assert _flow().to_pause(ALL, {}, queued) == set(STANDARD + BULK)


def test_topics_of_no_lane_only_pause_on_their_buffer() -> None:
    requests = [TopicPartition(TOPICS.requests, p) for p in range(4)]
    flow = _flow(max_in_flight=400)
    assert flow.to_pause(requests, {requests[2]: 100}, {"-": 5000}) == {requests[2]}
