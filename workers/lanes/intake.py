"""Preprocess lane pools: which tenants' request topics a pool reads.

With per-tenant topics (`kafka.tenant_topics`) a request's lane is known before it is read:
its topic names its tenant, and the registry the tenant's class. So the top lane's requests
need not wait in one preprocess worker behind a flood of bulk requests: a pool serving the
top lane reads only its tenants' topics, in a process (and at a CPU priority) of its own.

Every preprocess pool joins the one group `<prefix>.preprocess`, each with its own
subscription (Kafka assigns a topic's partitions only among the members subscribed to it).
When a tenant changes class, its topic moves to the other pool with its committed offsets:
nothing is read twice from the start or skipped, and while the pools' views of the registry
differ for a moment the topic is split between them, never read by both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from workers.names import Topics


class TenantTopicSelector:
    """The request topics of the tenants whose class is one of `lanes`; an unknown tenant's
    topic goes to the pool serving the default class (which admits or rejects it)."""

    def __init__(
        self, topics: Topics, lanes: tuple[str, ...], lane_of_tenant: Callable[[str], str]
    ) -> None:
        if not lanes:
            raise ValueError("a lane pool serves at least one lane")
        self.topics = topics
        self.lanes = frozenset(lanes)
        self._lane_of_tenant = lane_of_tenant

    def __call__(self, topic_names: Iterable[str]) -> frozenset[str]:
        return frozenset(
            name
            for name in topic_names
            if (tenant := self.topics.tenant_of(name)) is not None
            and self._lane_of_tenant(tenant) in self.lanes
        )
