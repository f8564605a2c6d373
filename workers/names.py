"""Every Kafka topic and Redis key name is built here, and nowhere else."""

from __future__ import annotations

import re
from dataclasses import dataclass

STAGES = ("preprocess", "inference", "postprocess")
LANES = ("realtime", "standard", "bulk")
"""Priority classes, highest first: each has its own topics between stages."""
TENANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""A tenant name that may be part of a topic name (no dots: the topic ends with it)."""


@dataclass(frozen=True)
class Topics:
    """Topic names under one prefix: `<prefix>.requests`, `<prefix>.preprocessed.<lane>`, ..."""

    prefix: str = "conveyor"

    @property
    def requests(self) -> str:
        return f"{self.prefix}.requests"

    def preprocessed_of(self, lane: str) -> str:
        """`<prefix>.preprocessed.<lane>`: the inference stage's input, one topic per lane."""
        return f"{self.prefix}.preprocessed.{_lane(lane)}"

    def inferred_of(self, lane: str) -> str:
        """`<prefix>.inferred.<lane>`: the postprocess stage's input, one topic per lane."""
        return f"{self.prefix}.inferred.{_lane(lane)}"

    @property
    def preprocessed(self) -> tuple[str, ...]:
        """Every lane's preprocessed topic, highest lane first."""
        return tuple(self.preprocessed_of(lane) for lane in LANES)

    @property
    def inferred(self) -> tuple[str, ...]:
        """Every lane's inferred topic, highest lane first."""
        return tuple(self.inferred_of(lane) for lane in LANES)

    def lane_of(self, topic: str) -> str | None:
        """The lane whose preprocessed or inferred topic `topic` is; None for other topics."""
        for head in (f"{self.prefix}.preprocessed.", f"{self.prefix}.inferred."):
            if topic.startswith(head) and topic[len(head) :] in LANES:
                return topic[len(head) :]
        return None

    @property
    def results(self) -> str:
        return f"{self.prefix}.results"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.dlq"

    @property
    def control(self) -> str:
        """Model lifecycle commands (`conveyor models load ...`); every inference worker reads
        all of it, without a consumer group."""
        return f"{self.prefix}.control"

    # ---- per-tenant topics (`kafka.tenant_topics`) ---------------------------------------

    def requests_of(self, tenant: str) -> str:
        """`<prefix>.requests.<tenant>`: only `tenant` may write here (a broker ACL)."""
        return f"{self.requests}.{_tenant(tenant)}"

    def results_of(self, tenant: str) -> str:
        """`<prefix>.results.<tenant>`: only `tenant` may read here (a broker ACL)."""
        return f"{self.results}.{_tenant(tenant)}"

    @property
    def tenant_requests_pattern(self) -> str:
        """Regex every tenant's requests topic matches (preprocess subscribes to it)."""
        return f"^{re.escape(self.requests)}\\.{TENANT_RE.pattern}$"

    def tenant_of(self, topic: str) -> str | None:
        """The tenant whose requests topic `topic` is; None for any other topic."""
        head = f"{self.requests}."
        if not topic.startswith(head):
            return None
        tenant = topic[len(head) :]
        return tenant if TENANT_RE.fullmatch(tenant) else None

    def is_own(self, topic: str) -> bool:
        """Whether `topic` is under Conveyor's prefix (its pipeline's or a tenant's)."""
        return topic == self.prefix or topic.startswith(f"{self.prefix}.")

    def gateway_replies(self, instance_id: str) -> str:
        """`<prefix>.gateway.<instance_id>`: the reply topic of one gateway instance, where its
        one results consumer reads the answers to the requests it published."""
        return f"{self.prefix}.gateway.{_tenant(instance_id)}"

    def is_gateway_replies(self, topic: str) -> bool:
        """Whether `topic` is some gateway instance's reply topic."""
        head = f"{self.prefix}.gateway."
        return topic.startswith(head) and TENANT_RE.fullmatch(topic[len(head) :]) is not None

    def tenant_topics(self, tenant: str) -> tuple[str, str]:
        return self.requests_of(tenant), self.results_of(tenant)

    def all(self) -> tuple[str, ...]:
        return (
            self.requests,
            *self.preprocessed,
            *self.inferred,
            self.results,
            self.dlq,
            self.control,
        )

    def inputs_of(self, stage: str, lanes: tuple[str, ...] = ()) -> tuple[str, ...]:
        """The topics a stage reads (one per lane between stages), highest lane first; of
        `lanes` only, when given (a lane pool)."""
        if stage == "preprocess":
            return (self.requests,)
        topic_of = self.preprocessed_of if stage == "inference" else self.inferred_of
        return tuple(topic_of(lane) for lane in LANES if not lanes or lane in lanes)

    def group_of(self, stage: str, lanes: tuple[str, ...] = ()) -> str:
        """The consumer group every replica of a stage (of one lane pool) joins. Preprocess
        pools share one group: a tenant's requests topic moves between them, with its
        committed offsets, when the tenant changes class (`lanes.intake`)."""
        if stage == "preprocess" or not lanes or set(lanes) == set(LANES):
            return f"{self.prefix}.{stage}"
        return f"{self.prefix}.{stage}." + "+".join(lane for lane in LANES if lane in lanes)


def _lane(lane: str) -> str:
    if lane not in LANES:
        raise ValueError(f"lane {lane!r} is none of {', '.join(LANES)}")
    return lane


def _tenant(tenant: str) -> str:
    if not TENANT_RE.fullmatch(tenant):
        raise ValueError(
            f"tenant {tenant!r} cannot name a topic: letters, digits, '_' and '-', "
            "at most 64, starting with a letter or digit"
        )
    return tenant


@dataclass(frozen=True)
class RedisKeys:
    """Redis key names under one prefix (which ends with a separator, e.g. `conveyor:`)."""

    prefix: str = "conveyor:"

    def task(self, task_id: str) -> str:
        """Hash holding one task's ledger record."""
        return f"{self.prefix}task:{task_id}"

    def worker(self, instance_id: str) -> str:
        """Hash announcing one live worker (stage, metrics URL); expires unless refreshed."""
        return f"{self.prefix}worker:{instance_id}"

    def id_owner(self, task_id: str) -> str:
        """Which Kafka record (topic/partition/offset) first used a task id (duplicates).
        Not `claim:`: that namespace holds claim-checked tensors (`schemas.claim_key`)."""
        return f"{self.prefix}owner:{task_id}"

    def workers(self) -> str:
        """Set of the instance ids that announced a worker (`worker`): readers look there, not
        through a SCAN of the whole keyspace, which grows with the ledger."""
        return f"{self.prefix}workers"

    def pending(self, tenant: str) -> str:
        """Sorted set of one tenant's admitted, unfinished task ids (score: admission ms)."""
        return f"{self.prefix}pending:{tenant}"

    def tenants(self) -> str:
        """Hash of tenant policies: tenant -> JSON (class, weight, quota, cap, deadline)."""
        return f"{self.prefix}tenants"

    def rate_bucket(self, tenant: str) -> str:
        """One tenant's rate-quota token bucket, shared by every preprocess replica."""
        return f"{self.prefix}rate:{tenant}"

    def api_keys(self) -> str:
        """Hash of the gateway's API keys: SHA-256 of the key (hex) -> tenant."""
        return f"{self.prefix}api-keys"

    def gateway_task(self, task_id: str) -> str:
        """Hash of a task submitted through the gateway asynchronously (or timed out):
        tenant, callback, and the result once it came (expires with `gateway.result_ttl_s`)."""
        return f"{self.prefix}gateway-task:{task_id}"

    def model_events(self) -> str:
        """Stream of model lifecycle events (loaded, switched, refused, retired ...)."""
        return f"{self.prefix}model-events"
