"""The `conveyor` command: one entry point, each subcommand a thin call into its module."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence

from workers.settings import Settings, SettingsError, load_settings
from workers.stack import NativeStack, StackConfig, StackError

Handler = Callable[[argparse.Namespace, Settings], int]


def stack_config(settings: Settings) -> StackConfig:
    s = settings.stack
    return StackConfig(
        state_dir=s.state_dir,
        cache_dir=s.cache_dir,
        kafka_port=s.kafka_port,
        kafka_controller_port=s.kafka_controller_port,
        redis_port=s.redis_port,
        install_missing=s.install_missing,
    )


def _stack(args: argparse.Namespace, settings: Settings) -> int:
    stack = NativeStack(stack_config(settings))
    started = time.monotonic()
    if args.action == "up":
        statuses = stack.up()
        print(f"stack up in {time.monotonic() - started:.1f}s")
    elif args.action == "down":
        stack.down()
        statuses = stack.status()
    else:
        statuses = stack.status()
    for status in statuses:
        print(status.line())
    if args.action == "down":
        return 0 if not any(s.pid for s in statuses) else 1
    return 0 if all(s.ready for s in statuses) else 1


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    parser = argparse.ArgumentParser(prog="conveyor", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    handlers: dict[str, Handler] = {}

    stack = commands.add_parser("stack", help="run a real Kafka and Redis locally, without Docker")
    stack.add_argument("action", choices=["up", "down", "status"])
    handlers["stack"] = _stack

    return parser, handlers


def main(argv: Sequence[str] | None = None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return handlers[args.command](args, settings)
    except StackError as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
