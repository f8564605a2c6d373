"""Lane pools: which topics and which consumer group a worker serving some lanes gets, and
the settings that name them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from workers.names import Topics
from workers.settings import WorkerSettings


def test_a_pool_reads_its_lanes_topics_highest_first() -> None:
    topics = Topics("p")
    assert topics.inputs_of("inference") == topics.preprocessed
    assert topics.inputs_of("inference", ("bulk", "realtime")) == (
        "p.preprocessed.realtime",
        "p.preprocessed.bulk",
    )
    assert topics.inputs_of("postprocess", ("standard",)) == ("p.inferred.standard",)
    assert topics.inputs_of("preprocess", ("realtime",)) == ("p.requests",)


def test_each_pool_is_a_consumer_group_of_its_own_and_every_lane_is_the_stage_group() -> None:
    topics = Topics("p")
    assert topics.group_of("inference") == "p.inference"
    assert topics.group_of("inference", ("bulk", "standard", "realtime")) == "p.inference"
    assert topics.group_of("inference", ("realtime",)) == "p.inference.realtime"
    # Named in lane order, so the same lanes in any order make the same group.
    assert topics.group_of("postprocess", ("bulk", "standard")) == "p.postprocess.standard+bulk"
    assert topics.group_of("postprocess", ("standard", "bulk")) == "p.postprocess.standard+bulk"


def test_preprocess_pools_share_one_group() -> None:
    # A tenant's requests topic moves between them with its committed offsets.
    topics = Topics("p")
    assert topics.group_of("preprocess", ("realtime",)) == "p.preprocess"
    assert topics.group_of("preprocess", ("standard", "bulk")) == "p.preprocess"


def test_worker_lanes_must_be_known_and_distinct() -> None:
    assert WorkerSettings(lanes=("realtime",)).lanes == ("realtime",)
    with pytest.raises(ValidationError, match="none of realtime, standard, bulk"):
        WorkerSettings(lanes=("urgent",))
    with pytest.raises(ValidationError, match="name a lane twice"):
        WorkerSettings(lanes=("bulk", "bulk"))
    with pytest.raises(ValidationError):
        WorkerSettings(nice=20)
