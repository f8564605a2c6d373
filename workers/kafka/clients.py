"""Producers and consumers configured one way for every stage."""

from __future__ import annotations

import os
import socket

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from workers.settings import KafkaSettings


def client_id(settings: KafkaSettings, role: str) -> str:
    return f"{settings.client_id}-{role}-{socket.gethostname()}-{os.getpid()}"


def make_producer(settings: KafkaSettings, role: str) -> AIOKafkaProducer:
    """Idempotent, acks from all replicas: a retried send never duplicates a record."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap,
        client_id=client_id(settings, role),
        acks="all",
        enable_idempotence=True,
        linger_ms=settings.linger_ms,
        compression_type=settings.compression_type,
        max_request_size=settings.max_message_bytes,
    )


def make_consumer(settings: KafkaSettings, role: str, group_id: str) -> AIOKafkaConsumer:
    """Never auto-commits: offsets move only after the outputs they produced are acknowledged."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        client_id=client_id(settings, role),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.max_poll_records,
        max_poll_interval_ms=settings.max_poll_interval_ms,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=max(1000, settings.session_timeout_ms // 4),
        fetch_max_bytes=max(52428800, settings.max_message_bytes),
        max_partition_fetch_bytes=max(1048576, settings.max_message_bytes),
    )
