"""`conveyor models load|unload|rollback|list`: control messages out, model events in."""

from __future__ import annotations

import argparse

from workers.control import ControlCommand, send_command
from workers.ledger.connection import redis_client
from workers.models.repository import ModelRepository
from workers.names import RedisKeys, Topics
from workers.settings import Settings

EVENTS_SHOWN = 20


def command_of(args: argparse.Namespace) -> ControlCommand:
    """The control message a `models` subcommand stands for."""
    if args.action == "load":
        role, fraction = "serve", None
        if args.canary is not None:
            role, fraction = "canary", args.canary
        elif args.shadow is not None:
            role, fraction = "shadow", args.shadow
        return ControlCommand("load", args.model, args.version, role, fraction)
    if args.action == "unload":
        return ControlCommand("unload", args.model, args.version)
    return ControlCommand("rollback", args.model)


async def run_model_command(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "list":
        return await list_models(settings)
    command = command_of(args)
    topics = Topics(settings.kafka.topic_prefix)
    await send_command(settings.kafka, topics.control, command)
    print(f"sent {command.action} {command.model} {command.version or ''} ({command.command_id})")
    print("every inference worker applies it; `conveyor models list` shows the outcome")
    return 0


async def list_models(settings: Settings) -> int:
    repository = ModelRepository(settings.model_repository)
    for name, config in sorted(repository.models.items()):
        on_disk = config.available_versions()
        print(f"{name}: on disk {on_disk}, policy serves {list(config.served_versions)}")
    redis = redis_client(settings.redis, decode_responses=True)
    try:
        stream = RedisKeys(settings.redis.key_prefix).model_events()
        events = await redis.xrevrange(stream, count=EVENTS_SHOWN)
    finally:
        await redis.aclose()
    for _, raw in reversed(events or []):
        fields = {str(k): str(v) for k, v in (raw or {}).items()}
        print(
            f"{fields.get('at_ms')} {fields.get('worker')} {fields.get('model')} "
            f"v{fields.get('version')} {fields.get('event')} {fields.get('source')} "
            f"{fields.get('message', '')}".rstrip()
        )
    return 0
