from __future__ import annotations

import random

from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata
from hypothesis import given
from hypothesis import strategies as st

from workers.kafka.offsets import OffsetTracker, decode_done, encode_done

TP = TopicPartition("t", 0)
TP1 = TopicPartition("t", 1)


def _offsets(commits: dict[TopicPartition, OffsetAndMetadata]) -> dict[TopicPartition, int]:
    return {tp: c.offset for tp, c in commits.items()}


def test_commits_only_up_to_the_lowest_unfinished_offset() -> None:
    tracker = OffsetTracker()
    for offset in range(10, 15):
        tracker.taken(TP, offset)
    tracker.finished(TP, 12)
    tracker.finished(TP, 13)
    commit = tracker.to_commit()
    assert _offsets(commit) == {TP: 10}  # nothing below 10 is ours: commit point stays 10
    assert decode_done(10, commit[TP].metadata) == {12, 13}
    tracker.committed(commit)
    assert tracker.to_commit() == {}
    tracker.finished(TP, 10)
    assert _offsets(tracker.to_commit()) == {TP: 11}
    tracker.finished(TP, 11)
    tracker.finished(TP, 14)
    assert tracker.to_commit() == {TP: OffsetAndMetadata(15, "")}
    assert tracker.unfinished() == 0


def test_partitions_are_independent_and_revoked_ones_are_forgotten() -> None:
    tracker = OffsetTracker()
    tracker.taken(TP, 0)
    tracker.taken(TP1, 7)
    tracker.finished(TP1, 7)
    assert _offsets(tracker.to_commit()) == {TP1: 8}
    tracker.forget([TP1])
    tracker.finished(TP1, 8)
    assert TP1 not in tracker.to_commit()
    assert tracker.unfinished() == 1


def test_a_new_owner_skips_what_the_last_one_finished_above_its_commit() -> None:
    first = OffsetTracker()
    for offset in range(100, 110):
        first.taken(TP, offset)
    for offset in (100, 101, 104, 105, 106, 109):
        first.finished(TP, offset)
    commit = first.to_commit()[TP]
    assert commit.offset == 102

    second = OffsetTracker()
    second.resume(TP, commit)
    redelivered = [o for o in range(102, 110) if not second.already_done(TP, o)]
    assert redelivered == [102, 103, 107, 108]
    for offset in range(102, 110):
        second.taken(TP, offset)
        if second.already_done(TP, offset):
            second.finished(TP, offset)
    second.finished(TP, 102)
    assert second.to_commit()[TP].offset == 103
    assert decode_done(103, second.to_commit()[TP].metadata) == {104, 105, 106, 109}


@given(st.sets(st.integers(min_value=1, max_value=5000), max_size=400))
def test_done_offsets_round_trip_through_the_metadata(done: set[int]) -> None:
    assert decode_done(1000, encode_done(1000, {1000 + d for d in done})) == {
        1000 + d for d in done
    }


def test_random_completion_orders_never_commit_past_unfinished_work() -> None:
    rng = random.Random(7)
    for _ in range(200):
        tracker = OffsetTracker()
        offsets = list(range(50))
        for offset in offsets:
            tracker.taken(TP, offset)
        rng.shuffle(offsets)
        finished: set[int] = set()
        for offset in offsets[: rng.randrange(50)]:
            tracker.finished(TP, offset)
            finished.add(offset)
            commit = tracker.to_commit().get(TP)
            if commit is not None:
                assert all(o in finished for o in range(commit.offset))
                assert decode_done(commit.offset, commit.metadata) == {
                    o for o in finished if o >= commit.offset
                }


def test_work_done_above_an_unfinished_first_record_is_committed_at_position_zero() -> None:
    # A batch that finished before the partition's very first record: an exactly-once
    # transaction commits its outputs, so the next owner must learn to skip those records.
    tracker = OffsetTracker()
    for offset in range(4):
        tracker.taken(TP, offset)
    assert tracker.to_commit() == {}
    tracker.finished(TP, 2)
    tracker.finished(TP, 3)
    commit = tracker.to_commit()
    assert _offsets(commit) == {TP: 0}
    resumed = OffsetTracker()
    resumed.resume(TP, commit[TP])
    assert [o for o in range(4) if resumed.already_done(TP, o)] == [2, 3]
