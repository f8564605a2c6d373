"""Control messages: `conveyor models load|unload|rollback`, read by every inference worker.

The control topic (`Topics.control`) is read without a consumer group: each inference worker
assigns itself every partition from the end, so every replica applies every command given
while it runs (commands from before it started do not apply: at start, the repository folder
is the truth). Commands are JSON, encoded and decoded here and nowhere else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from workers.component import Component
from workers.kafka.admin import partitions_of
from workers.kafka.clients import Connection, connection_options
from workers.models.lifecycle import ROLES, ModelLifecycle
from workers.tasks import TaskSet

log = logging.getLogger(__name__)

Action = Literal["load", "unload", "rollback"]
ACTIONS = ("load", "unload", "rollback")


class ControlError(ValueError):
    """A control message that cannot be applied; names the field and the bad value."""


@dataclass(frozen=True)
class ControlCommand:
    action: Action
    model: str
    version: int | None = None
    """Required by load and unload."""
    role: str = "serve"
    """load: serve (switch to it), canary or shadow."""
    fraction: float | None = None
    """Canary share of tasks or shadow share of batches; None: the worker's setting."""
    command_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    issued_at_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ControlError(f"action must be one of {ACTIONS}, got {self.action!r}")
        if self.action != "rollback" and self.version is None:
            raise ControlError(f"{self.action} needs a version, got None")
        if self.role not in ROLES:
            raise ControlError(f"role must be one of {ROLES}, got {self.role!r}")
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise ControlError(f"fraction must be within [0, 1], got {self.fraction}")

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode("utf-8")

    @classmethod
    def decode(cls, raw: bytes) -> ControlCommand:
        try:
            body = json.loads(raw)
            return cls(
                action=body["action"],
                model=str(body["model"]),
                version=None if body.get("version") is None else int(body["version"]),
                role=str(body.get("role", "serve")),
                fraction=None if body.get("fraction") is None else float(body["fraction"]),
                command_id=str(body.get("command_id", "")),
                issued_at_ms=int(body.get("issued_at_ms", 0)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ControlError(f"control message does not decode: {exc!r}: {raw[:200]!r}") from exc


async def send_command(connection: Connection, topic: str, command: ControlCommand) -> None:
    """Publish one command (the CLI's side) and wait for the broker's ack."""
    producer = AIOKafkaProducer(**connection_options(connection), acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, command.encode(), key=command.model.encode())
    finally:
        await producer.stop()


async def apply(lifecycle: ModelLifecycle, command: ControlCommand) -> bool:
    """Carry out one command; False when the lifecycle refused it (an event says why)."""
    source = f"control:{command.command_id[:12]}"
    if command.action == "load":
        assert command.version is not None
        return await lifecycle.load(
            command.model, command.version, command.role, command.fraction, source
        )
    if command.action == "unload":
        assert command.version is not None
        return await lifecycle.unload(command.model, command.version, source)
    return await lifecycle.rollback(command.model, source)


class ControlListener(Component):
    """Reads the control topic from its end and applies each command in order."""

    def __init__(self, lifecycle: ModelLifecycle, connection: Connection, topic: str) -> None:
        self.lifecycle = lifecycle
        self.connection = connection
        self.topic = topic
        self.applied = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._tasks = TaskSet(self._crashed)
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        if self._consumer is not None:
            raise RuntimeError("ControlListener already started")
        partitions = [
            TopicPartition(self.topic, p) for p in await partitions_of(self.connection, self.topic)
        ]
        self._consumer = AIOKafkaConsumer(
            **connection_options(self.connection), group_id=None, enable_auto_commit=False
        )
        await self._consumer.start()
        self._consumer.assign(partitions)
        await self._consumer.seek_to_end(*partitions)
        for tp in partitions:  # fix the start position now, before any command is sent
            await self._consumer.position(tp)
        self._tasks.start(self._loop(self._consumer), "control-listener")
        log.info("control listener ready on %s", self.topic)

    async def stop(self) -> None:
        self._stopping.set()
        await self._tasks.cancel()
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def _loop(self, consumer: AIOKafkaConsumer) -> None:
        while not self._stopping.is_set():
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    await self._handle(record.value or b"")

    async def _handle(self, raw: bytes) -> None:
        try:
            command = ControlCommand.decode(raw)
        except ControlError as exc:
            log.warning("%s", exc)
            return
        try:
            ok = await apply(self.lifecycle, command)
        except Exception:  # an unknown model, a bug: reported, the listener goes on
            log.exception("control command %s failed", command)
            return
        self.applied += 1
        log.info("control %s %s v%s: %s", command.action, command.model, command.version, ok)

    def _crashed(self, error: BaseException) -> None:
        log.error("control listener crashed: %s", error)
