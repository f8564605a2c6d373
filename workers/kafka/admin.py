"""Create the topics a worker needs, idempotently, when they are missing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code
from aiokafka.protocol.admin import CreateAclsRequest

from workers.kafka.clients import Connection, connection_options, start_client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int = 1
    configs: dict[str, str] = field(default_factory=dict)


async def ensure_topics(connection: Connection, specs: Iterable[TopicSpec]) -> list[str]:
    """Create each missing topic; returns the names created. Existing topics are left alone."""
    wanted = {spec.name: spec for spec in specs}
    admin = AIOKafkaAdminClient(**connection_options(connection))
    await start_client(admin, connection)
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.configs)
            for name, s in wanted.items()
            if name not in existing
        ]
        if not missing:
            return []
        response = await admin.create_topics(missing)
        created = []
        for topic, error_code, *rest in response.topic_errors:
            # Another replica of this stage may have created it between our list and create.
            if error_code == TopicAlreadyExistsError.errno:
                continue
            if error_code != 0:
                error = for_code(error_code)
                raise error(f"creating topic {topic!r} failed: {rest[0] if rest else ''}")
            created.append(topic)
        await _until_described(admin, created)
        log.info("created topics %s", created)
        return created
    finally:
        await admin.close()


async def _until_described(
    admin: AIOKafkaAdminClient, topics: list[str], timeout_s: float = 30
) -> None:
    """Creation returns before every broker's metadata lists the topic: wait until it does."""
    if not topics:
        return
    async with asyncio.timeout(timeout_s):
        while True:
            described = await admin.describe_topics(topics)
            if all(t["error_code"] == 0 and t["partitions"] for t in described):
                return
            await asyncio.sleep(0.05)


async def delete_topics_with_prefix(connection: Connection, prefix: str) -> None:
    admin = AIOKafkaAdminClient(**connection_options(connection))
    await start_client(admin, connection)
    try:
        doomed = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()


async def partitions_of(connection: Connection, topic: str) -> list[int]:
    """The partition ids of an existing topic; raises when the topic is missing."""
    return (await partitions_of_each(connection, [topic]))[topic]


async def partitions_of_each(connection: Connection, topics: list[str]) -> dict[str, list[int]]:
    """The partition ids of each existing topic, in one request; raises when one is missing."""
    admin = AIOKafkaAdminClient(**connection_options(connection))
    await start_client(admin, connection)
    try:
        found = {}
        for described in await admin.describe_topics(topics):
            topic = described["topic"]
            if described["error_code"] != 0:
                raise for_code(described["error_code"])(f"topic {topic!r} cannot be described")
            found[topic] = sorted(p["partition"] for p in described["partitions"])
        return found
    finally:
        await admin.close()


_RESOURCE_TYPES = {"topic": 2, "group": 3}
_OPERATIONS = {"read": 3, "write": 4, "describe": 8}
_LITERAL, _ALLOW = 3, 3


@dataclass(frozen=True)
class Acl:
    """One ALLOW rule: `principal` (e.g. `User:acme`) may `operation` the named resource."""

    principal: str
    operation: str
    """read, write or describe."""
    resource: str
    resource_type: str = "topic"

    def line(self) -> str:
        return (
            f"allow {self.principal} {self.operation.upper()} on "
            f"{self.resource_type} {self.resource} (literal)"
        )


async def create_acls(connection: Connection, acls: Iterable[Acl]) -> None:
    """Grant each ALLOW rule (the caller needs ALTER on the cluster: a super user)."""
    admin = AIOKafkaAdminClient(**connection_options(connection))
    await start_client(admin, connection)
    try:
        for acl in acls:
            request = CreateAclsRequest(
                _RESOURCE_TYPES[acl.resource_type],
                acl.resource,
                _LITERAL,
                acl.principal,
                "*",
                _OPERATIONS[acl.operation],
                _ALLOW,
            )
            response = await admin._send_request(request)  # aiokafka has no create_acls
            for error_code, message in response.creation_responses:
                if error_code != 0:
                    raise for_code(error_code)(f"granting {acl.line()} failed: {message}")
    finally:
        await admin.close()
