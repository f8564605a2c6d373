from __future__ import annotations

from aiokafka import TopicPartition

from workers.kafka.offsets import OffsetTracker

TP = TopicPartition("t", 0)
TP1 = TopicPartition("t", 1)


def test_commits_only_up_to_the_lowest_unfinished_offset() -> None:
    tracker = OffsetTracker()
    for offset in range(10, 15):
        tracker.taken(TP, offset)
    tracker.finished(TP, 12)
    tracker.finished(TP, 13)
    assert tracker.to_commit() == {TP: 10}  # nothing below 10 is ours: commit point stays 10
    tracker.committed({TP: 10})
    assert tracker.to_commit() == {}
    tracker.finished(TP, 10)
    assert tracker.to_commit() == {TP: 11}
    tracker.finished(TP, 11)
    tracker.finished(TP, 14)
    assert tracker.to_commit() == {TP: 15}
    assert tracker.unfinished() == 0


def test_partitions_are_independent_and_revoked_ones_are_forgotten() -> None:
    tracker = OffsetTracker()
    tracker.taken(TP, 0)
    tracker.taken(TP1, 7)
    tracker.finished(TP1, 7)
    assert tracker.to_commit() == {TP: 0, TP1: 8} or tracker.to_commit() == {TP1: 8}
    tracker.forget([TP1])
    tracker.finished(TP1, 8)
    assert TP1 not in tracker.to_commit()
    assert tracker.unfinished() == 1
