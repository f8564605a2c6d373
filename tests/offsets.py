"""A consumer group's committed offsets, as the broker holds them."""

from __future__ import annotations

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


async def committed_offsets(bootstrap: str, group: str) -> dict[TopicPartition, int]:
    """Every committed offset of `group`, read in one OffsetFetch request.

    One request, not one per partition: the coordinator answers from one consistent state,
    so a reader never sees some partitions' commits and not others' while it loads them.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        return {tp: meta.offset for tp, meta in offsets.items()}
    finally:
        await admin.close()
