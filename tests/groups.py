"""A consumer group as the broker describes it."""

from __future__ import annotations

from typing import Any

from aiokafka.admin import AIOKafkaAdminClient


async def described_group(bootstrap: str, group: str) -> tuple[str, list[Any]]:
    """The group's state (e.g. "Stable") and its members, each (member id, client id, host,
    metadata, assignment bytes), in one DescribeGroups request."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    (_error, _group, state, _protocol_type, _protocol, members, *_rest) = described.groups[0]
    return state, list(members)
