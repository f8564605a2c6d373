"""The real Kafka and Redis a test session runs against, chosen once per session.

Order: KAFKA_BOOTSTRAP / REDIS_URL from the environment; else testcontainers when a Docker
engine answers a ping; else the project's own native launcher on free loopback ports.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from workers.stack import NativeStack, StackConfig
from workers.stack.secure import ADMIN_USER, KAFKA_MECHANISM, REDIS_USER, SecureAccess


@dataclass(frozen=True)
class Services:
    kafka_bootstrap: str
    redis_url: str
    origin: str
    """"environment", "testcontainers" or "native"."""
    restart_kafka: Callable[[], None] | None = None
    """Restarts the broker on the same data; None where the stack is not ours to restart."""
    restart_redis: Callable[[], None] | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        return bool(docker.from_env(timeout=3).ping())
    except Exception:  # no engine, no socket, no permission: all mean "not here"
        return False


@contextmanager
def _native(state_dir: Path) -> Iterator[Services]:
    config = StackConfig(
        state_dir=state_dir,
        kafka_port=_free_port(),
        kafka_controller_port=_free_port(),
        redis_port=_free_port(),
    )
    stack = NativeStack(config)
    try:
        stack.up()
        yield Services(
            config.kafka_bootstrap,
            config.redis_url,
            "native",
            stack.restart_kafka,
            stack.restart_redis,
        )
    finally:
        stack.down()


@contextmanager
def _containers() -> Iterator[Services]:
    from testcontainers.kafka import KafkaContainer
    from testcontainers.redis import RedisContainer

    with ExitStack() as stack:
        kafka = stack.enter_context(KafkaContainer("confluentinc/cp-kafka:7.9.0").with_kraft())
        redis = stack.enter_context(RedisContainer("redis:7.4-alpine"))
        host, port = redis.get_container_host_ip(), redis.get_exposed_port(6379)
        # A restarted container may get new host ports, so restarts are a native-only feature.
        yield Services(kafka.get_bootstrap_server(), f"redis://{host}:{port}/0", "testcontainers")


@contextmanager
def session_services(state_dir: Path) -> Iterator[Services]:
    bootstrap, redis_url = os.environ.get("KAFKA_BOOTSTRAP"), os.environ.get("REDIS_URL")
    if bootstrap and redis_url:
        yield Services(bootstrap, redis_url, "environment")
    elif _docker_answers():
        with _containers() as services:
            yield services
    else:
        with _native(state_dir) as services:
            yield services


@dataclass(frozen=True)
class SecureServices:
    """A second native stack: Kafka with SASL/SCRAM and ACLs, Redis with TLS and an ACL user."""

    kafka_bootstrap: str
    redis_url: str
    access: SecureAccess

    def kafka(self, user: str = ADMIN_USER, **extra: object) -> dict[str, object]:
        """`kafka` settings of a client connecting as `user` (password from its file)."""
        return {
            "bootstrap": self.kafka_bootstrap,
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": KAFKA_MECHANISM,
            "sasl_username": user,
            "sasl_password_file": self.access.password_file(user),
            **extra,
        }

    def redis(self, **extra: object) -> dict[str, object]:
        return {
            "url": self.redis_url,
            "username": REDIS_USER,
            "password_file": self.access.password_file(REDIS_USER),
            "ssl_ca_certs": self.access.ca_file,
            **extra,
        }

    def env(self) -> dict[str, str]:
        """The same, as a worker process reads it: `CONVEYOR_` variables."""
        found = {f"CONVEYOR_KAFKA__{k.upper()}": str(v) for k, v in self.kafka().items()}
        found |= {f"CONVEYOR_REDIS__{k.upper()}": str(v) for k, v in self.redis().items()}
        return found


@contextmanager
def secure_session_services(state_dir: Path) -> Iterator[SecureServices]:
    config = StackConfig(
        state_dir=state_dir,
        kafka_port=_free_port(),
        kafka_controller_port=_free_port(),
        redis_port=_free_port(),
        secure=True,
    )
    stack = NativeStack(config)
    try:
        stack.up()
        access = stack.access()
        assert access is not None
        yield SecureServices(config.kafka_bootstrap, config.redis_url, access)
    finally:
        stack.down()
