"""The pure parts of bench.bench_buckets: bucket assignment, batch forming, padding accounting.

No model runs here, and nothing needs matplotlib (the bench imports it only to draw).
"""

from __future__ import annotations

import pytest

from bench.bench_buckets import (
    BOUNDARIES,
    arrival_batches,
    bucket_of,
    bucketed_batches,
    computed_tokens,
    padding_of,
    word_counts,
)

# Two paragraphs among short texts, batch size 2, worked by hand:
# arrival order pairs (10, 200) (12, 14) (250, 9): 2*200 + 2*14 + 2*250 = 928 computed;
# bucketed: <= 16 holds 10, 12, 14, 9 -> (10, 12) (14, 9): 2*12 + 2*14 = 52;
#           <= 256 holds 200, 250 -> (200, 250): 2*250 = 500; 552 in all.
LENGTHS = [10, 200, 12, 14, 250, 9]
REAL = sum(LENGTHS)  # 495


@pytest.mark.parametrize(
    ("tokens", "bucket"),
    [(1, 16), (16, 16), (17, 32), (32, 32), (33, 64), (128, 128), (129, 256), (256, 256)],
)
def test_bucket_is_the_smallest_boundary_at_or_above_the_length(tokens: int, bucket: int) -> None:
    assert bucket_of(tokens) == bucket


def test_a_length_past_the_last_boundary_is_an_error() -> None:
    with pytest.raises(ValueError, match="257"):
        bucket_of(257)


def test_arrival_batches_are_consecutive_runs() -> None:
    assert arrival_batches(7, 3) == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        arrival_batches(7, 0)


def test_bucketed_batches_keep_arrival_order_within_a_bucket() -> None:
    # Full batches in the order they close, then the partial ones (a deadline flush).
    assert bucketed_batches(LENGTHS, 2) == [[0, 2], [1, 4], [3, 5]]
    assert bucketed_batches([20, 5, 30, 6, 7], 2) == [[0, 2], [1, 3], [4]]


def test_hand_worked_example_bucketing_computes_fewer_tokens() -> None:
    arrival = padding_of(LENGTHS, arrival_batches(len(LENGTHS), 2))
    bucketed = padding_of(LENGTHS, bucketed_batches(LENGTHS, 2))
    assert (arrival.real_tokens, arrival.computed_tokens, arrival.batches) == (REAL, 928, 3)
    assert (bucketed.real_tokens, bucketed.computed_tokens, bucketed.batches) == (REAL, 552, 3)
    assert arrival.padded_tokens == 928 - REAL
    assert arrival.padding_share == pytest.approx((928 - REAL) / 928)
    assert bucketed.padding_share < arrival.padding_share


def test_arrival_baseline_is_batch_size_times_longest_summed_over_batches() -> None:
    lengths = word_counts(500, seed=3)
    lengths = [min(n + 2, BOUNDARIES[-1]) for n in lengths]
    for batch_size in (1, 8, 32, 128):
        expected = sum(
            len(lengths[start : start + batch_size]) * max(lengths[start : start + batch_size])
            for start in range(0, len(lengths), batch_size)
        )
        assert computed_tokens(lengths, arrival_batches(len(lengths), batch_size)) == expected


def test_bucketing_never_computes_more_than_the_padded_boundary_and_holds_every_request() -> None:
    lengths = [min(n + 2, BOUNDARIES[-1]) for n in word_counts(1000, seed=7)]
    for batch_size in (8, 32):
        batches = bucketed_batches(lengths, batch_size)
        padding = padding_of(lengths, batches)  # raises unless each request is in one batch
        assert padding.real_tokens == sum(lengths)
        # A bucket's batch pads to its longest row, which is never past the boundary.
        assert padding.computed_tokens <= sum(bucket_of(n) for n in lengths)
        assert all(len({bucket_of(lengths[i]) for i in batch}) == 1 for batch in batches)


def test_padding_of_rejects_batches_that_lose_or_repeat_a_request() -> None:
    with pytest.raises(ValueError, match="exactly once"):
        padding_of([5, 6, 7], [[0, 1], [1]])


def test_length_mix_is_seeded_and_mostly_short() -> None:
    first, second = word_counts(2000), word_counts(2000)
    assert first == second
    assert min(first) >= 1
    short = sum(n + 2 <= 32 for n in first) / len(first)
    assert 0.6 < short < 0.9  # the log-normal's median is 16 words: most texts are short
    assert max(first) + 2 > 128  # and the tail reaches paragraphs
