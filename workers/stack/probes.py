"""Readiness checks that ask the real service, never a sleep."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import redis
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


async def _kafka_brokers(bootstrap: str, timeout_s: float, options: dict[str, Any]) -> int:
    client = AIOKafkaClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000), **options
    )
    try:
        await asyncio.wait_for(client.bootstrap(), timeout_s)
        # Fenced brokers are left out of metadata: a listed broker accepts produce requests.
        return len(client.cluster.brokers())
    finally:
        await client.close()


def kafka_ready(
    bootstrap: str, timeout_s: float = 3.0, options: dict[str, Any] | None = None
) -> bool:
    """True when the broker answers a metadata request and lists at least one live broker.
    `options`: security settings of the client (SASL credentials), as aiokafka takes them."""
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    if not port_open(host or "127.0.0.1", int(port)):
        return False
    try:
        return asyncio.run(_kafka_brokers(bootstrap, timeout_s, options or {})) > 0
    except (KafkaError, OSError, TimeoutError):
        return False


def redis_ready(url: str, timeout_s: float = 1.0, options: dict[str, Any] | None = None) -> bool:
    """True when Redis answers PING (`options`: credentials and TLS files)."""
    try:
        client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, **(options or {})
        )
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


def wait_until(check: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> bool:
    """Poll a real readiness check until it holds or the monotonic deadline passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval_s)
    return bool(check())
