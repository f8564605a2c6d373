"""Producers and consumers configured one way for every stage."""

from __future__ import annotations

import os
import socket

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from workers.settings import KafkaSettings


def client_id(settings: KafkaSettings, role: str) -> str:
    return f"{settings.client_id}-{role}-{socket.gethostname()}-{os.getpid()}"


def make_producer(
    settings: KafkaSettings,
    role: str,
    transactional_id: str | None = None,
    transaction_timeout_ms: int = 60_000,
) -> AIOKafkaProducer:
    """Idempotent, acks from all replicas: a retried send never duplicates a record.
    With a `transactional_id` every send must happen inside a transaction."""
    return AIOKafkaProducer(
        transactional_id=transactional_id,
        transaction_timeout_ms=transaction_timeout_ms,
        bootstrap_servers=settings.bootstrap,
        client_id=client_id(settings, role),
        acks="all",
        enable_idempotence=True,
        linger_ms=settings.linger_ms,
        compression_type=settings.compression_type,
        max_request_size=settings.max_message_bytes,
    )


def make_consumer(
    settings: KafkaSettings, role: str, group_id: str, instance_id: str | None = None
) -> AIOKafkaConsumer:
    """Never auto-commits: offsets move only after the outputs they produced are acknowledged.

    With a stable `instance_id` the consumer is a static group member: a restarted instance
    takes its partitions back without a rebalance of the whole group.
    """
    return AIOKafkaConsumer(
        group_instance_id=f"{group_id}.{instance_id}" if instance_id else None,
        bootstrap_servers=settings.bootstrap,
        client_id=client_id(settings, role),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # Records of aborted transactions never reach a stage (a no-op without transactions).
        isolation_level="read_committed",
        max_poll_records=settings.max_poll_records,
        max_poll_interval_ms=settings.max_poll_interval_ms,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=max(1000, settings.session_timeout_ms // 4),
        fetch_max_bytes=max(52428800, settings.max_message_bytes),
        max_partition_fetch_bytes=max(1048576, settings.max_message_bytes),
    )
