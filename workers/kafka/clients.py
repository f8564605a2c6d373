"""Producers and consumers configured one way for every stage, and the one place that
turns the security settings into what every aiokafka client needs to connect."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from aiokafka.helpers import create_ssl_context

from workers.settings import KafkaSettings

log = logging.getLogger(__name__)

Connection = KafkaSettings | str
"""Where and how to reach the broker: settings, or a bare bootstrap string (plaintext)."""

CLOSE_TIMEOUT_S = 10.0
"""How long a Kafka client may take to close (`stop_client`)."""

BROKER_DEFAULT_RECORD_BYTES = 1 << 20
"""Kafka's default `message.max.bytes` (1 MiB and 12 bytes): what any broker takes."""


def batch_bytes(connection: Connection) -> int:
    """A producer's record batch limit (aiokafka's `max_batch_size`): as large as any broker
    takes. aiokafka's own 16 KiB splits one delivery of 32 MiniLM results (~2 KiB each)
    into five batches of one partition, and an idempotent producer sends those one round
    trip after another (a partition with a batch in flight is muted)."""
    limit = BROKER_DEFAULT_RECORD_BYTES
    return limit if isinstance(connection, str) else min(connection.max_message_bytes, limit)


def connection_options(connection: Connection) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client (producer, consumer, admin, client):
    the bootstrap servers, and the security protocol, SASL credentials and TLS context."""
    if isinstance(connection, str):
        return {"bootstrap_servers": connection}
    s = connection
    options: dict[str, Any] = {
        "bootstrap_servers": s.bootstrap,
        "security_protocol": s.security_protocol,
    }
    if s.security_protocol in ("SSL", "SASL_SSL"):
        context = create_ssl_context(
            cafile=str(s.ssl_cafile) if s.ssl_cafile else None,
            certfile=str(s.ssl_certfile) if s.ssl_certfile else None,
            keyfile=str(s.ssl_keyfile) if s.ssl_keyfile else None,
        )
        context.check_hostname = s.ssl_check_hostname
        options["ssl_context"] = context
    if s.security_protocol.startswith("SASL_"):
        options["sasl_mechanism"] = s.sasl_mechanism
        options["sasl_plain_username"] = s.sasl_username
        options["sasl_plain_password"] = s.password()
    return options


def bootstrap_of(connection: Connection) -> str:
    return connection if isinstance(connection, str) else connection.bootstrap


class _Startable(Protocol):
    async def start(self) -> None: ...


class _Stoppable(Protocol):
    async def stop(self) -> None: ...


async def stop_client(client: _Stoppable, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
    """`client.stop()`, given up after `timeout_s`: aiokafka's close waits on the broker
    (a producer's last sends, a consumer leaving its group), and one that stopped answering
    must not keep a stopping process alive; what was not acknowledged is redelivered."""
    try:
        async with asyncio.timeout(timeout_s):
            await client.stop()
    except TimeoutError:
        log.warning("%s did not close in %.0f s", type(client).__name__, timeout_s)


async def start_client(client: _Startable, connection: Connection) -> None:
    """`client.start()`; a broker that cannot be reached or refuses the credentials fails
    at once with what was tried (address, protocol, mechanism, user; never the password)."""
    try:
        await client.start()
    except KafkaConnectionError as exc:
        raise KafkaConnectionError(describe_connection(connection, exc)) from exc


def describe_connection(connection: Connection, cause: BaseException) -> str:
    if isinstance(connection, str):
        return f"cannot connect to Kafka at {connection} (PLAINTEXT): {cause}"
    s = connection
    how: str = s.security_protocol
    if how.startswith("SASL_"):
        how += f", {s.sasl_mechanism} as user {s.sasl_username!r}"
    return (
        f"cannot connect to Kafka at {s.bootstrap} ({how}): {cause}; the broker refused the "
        "connection or the credentials: check kafka.bootstrap, kafka.security_protocol, "
        "kafka.sasl_mechanism and the user's password (the broker log says which)"
    )


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
        **connection_options(settings),
        client_id=client_id(settings, role),
        acks="all",
        enable_idempotence=True,
        linger_ms=settings.linger_ms,
        max_batch_size=batch_bytes(settings),
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
        **connection_options(settings),
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
