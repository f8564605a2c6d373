"""Preprocess lane pools: which tenants' request topics a pool reads, by the registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.lanes.intake import TenantTopicSelector
from workers.models.repository import ModelRepository
from workers.names import Topics
from workers.settings import LimitsSettings
from workers.stages.preprocess import PreprocessStage

TOPICS = Topics("p")
CLASSES = {"urgent": "realtime", "steady": "standard", "flood": "bulk"}


def _lane_of(tenant: str) -> str:
    return CLASSES.get(tenant, "standard")  # the default class for a tenant with no policy


def test_a_pool_reads_the_topics_of_its_lanes_tenants_only() -> None:
    cluster = [
        "p.requests.urgent",
        "p.requests.steady",
        "p.requests.flood",
        "p.requests.newcomer",
        "p.requests",  # the shared requests topic is no tenant's
        "p.preprocessed.realtime",
        "q.requests.urgent",  # another deployment's
        "p.requests.bad.name",
    ]
    realtime = TenantTopicSelector(TOPICS, ("realtime",), _lane_of)
    others = TenantTopicSelector(TOPICS, ("standard", "bulk"), _lane_of)
    assert realtime(cluster) == {"p.requests.urgent"}
    # An unknown tenant goes with the default class, to be admitted or rejected there.
    assert others(cluster) == {"p.requests.steady", "p.requests.flood", "p.requests.newcomer"}


def test_a_change_of_class_moves_the_topic_on_the_next_look() -> None:
    classes = dict(CLASSES)
    realtime = TenantTopicSelector(TOPICS, ("realtime",), lambda t: classes.get(t, "standard"))
    cluster = ["p.requests.urgent", "p.requests.flood"]
    assert realtime(cluster) == {"p.requests.urgent"}
    classes["urgent"], classes["flood"] = "bulk", "realtime"
    assert realtime(cluster) == {"p.requests.flood"}


def test_a_pool_serves_some_lane() -> None:
    with pytest.raises(ValueError, match="at least one lane"):
        TenantTopicSelector(TOPICS, (), _lane_of)


def test_a_preprocess_pool_needs_tenant_topics(tmp_path: Path) -> None:
    repository = ModelRepository(tmp_path)
    with pytest.raises(ValueError, match=r"kafka\.tenant_topics"):
        PreprocessStage(
            TOPICS, repository, LimitsSettings(), lane_of_tenant=_lane_of, lanes=("bulk",)
        )
    pool = PreprocessStage(
        TOPICS,
        repository,
        LimitsSettings(),
        tenant_topics=True,
        lane_of_tenant=_lane_of,
        lanes=("realtime",),
    )
    assert pool.input_pattern is None
    assert pool.input_selector is not None
    assert pool.input_selector(["p.requests.urgent", "p.requests.flood"]) == {"p.requests.urgent"}
    every_lane = PreprocessStage(TOPICS, repository, LimitsSettings(), tenant_topics=True)
    assert every_lane.input_selector is None
    assert every_lane.input_pattern == TOPICS.tenant_requests_pattern
