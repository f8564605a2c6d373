"""The `conveyor` command: one entry point, each subcommand a thin call into its module."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from workers.eventloop import run_on
from workers.exits import CommandError, ExitCode, explain, registry_errors
from workers.models.repository import RepositoryError
from workers.settings import DEFAULT_METRICS_PORT, Settings, SettingsError, load_settings
from workers.stack import NativeStack, StackConfig, StackError
from workers.stack.secure import SecureAccess, client_exports

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
        secure=s.secure,
        kafka_jit=s.kafka_jit,
    )


def _print_secure_settings(config: StackConfig, access: SecureAccess) -> None:
    """How a worker or client reaches the secured stack (paths to secrets, never secrets)."""
    print("secured: export these for workers and clients (as the admin user):")
    for line in client_exports(config.kafka_bootstrap, config.redis_url, access):
        print(f"  {line}")


def _stack(args: argparse.Namespace, settings: Settings) -> int:
    config = stack_config(settings)
    if args.secure:
        config = dataclasses.replace(config, secure=True)
    stack = NativeStack(config)
    started = time.monotonic()
    if args.action == "up":
        statuses = stack.up()
        print(f"stack up in {time.monotonic() - started:.1f}s")
        if (access := stack.access()) is not None:
            _print_secure_settings(config, access)
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


def _tenants(args: argparse.Namespace, settings: Settings) -> int:
    if args.action != "add":
        return asyncio.run(_tenant_policies(args, settings))
    from workers.tenants import add_tenant

    principal = args.principal or f"User:{args.name}"
    acls = asyncio.run(
        add_tenant(settings, args.name, principal, args.worker_principal, args.grant)
    )
    print(f"tenant {args.name}: topics ready")
    print("ACLs granted:" if args.grant else "ACLs to grant:")
    for acl in acls:
        print(f"  {acl.line()}")
    return 0


_POLICY_FIELDS = ("lane", "weight", "rate_per_s", "burst", "max_in_flight", "deadline_ms")
"""Options of `tenants set`, named as the policy's fields (`--class` is stored as `lane`)."""


async def _tenant_policies(args: argparse.Namespace, settings: Settings) -> int:
    """`tenants set|show|list|delete`: the tenant registry in Redis."""
    import orjson

    from workers.lanes.registry import TenantPolicy, TenantRegistry
    from workers.ledger.connection import redis_client
    from workers.names import RedisKeys

    client = redis_client(settings.redis)
    registry = TenantRegistry(
        client, RedisKeys(settings.redis.key_prefix), TenantPolicy.defaults(settings.lanes)
    )
    try:
        with registry_errors(settings, "tenant registry"):
            if args.action == "set":
                changes = {
                    f: getattr(args, f) for f in _POLICY_FIELDS if getattr(args, f) is not None
                }
                policy = await registry.set(args.name, **changes)
            elif args.action == "list":
                _print_tenant_table(await registry.raw())
                return 0
            elif args.action == "delete":
                if await registry.delete(args.name):
                    print(f"tenant {args.name}: policy deleted")
                    return 0
                print(f"conveyor: tenant {args.name!r} has no policy", file=sys.stderr)
                return 1
            elif (found := await registry.get(args.name)) is not None:
                policy = found
            else:
                lanes = settings.lanes
                treated = (
                    f"served as lane {lanes.default_class}, weight {lanes.default_weight}"
                    if lanes.unknown_tenants == "default"
                    else "rejected (lanes.unknown_tenants = reject)"
                )
                print(
                    f"conveyor: tenant {args.name!r} has no policy; it is {treated}",
                    file=sys.stderr,
                )
                return 1
    finally:
        await client.aclose()
    print(orjson.dumps(policy.to_dict(), option=orjson.OPT_INDENT_2).decode())
    return 0


def _print_tenant_table(entries: dict[str, bytes]) -> None:
    from workers.lanes.registry import PolicyError, TenantPolicy

    rows = [("TENANT", "CLASS", "WEIGHT", "RATE/S", "BURST", "MAX-IN-FLIGHT", "DEADLINE-MS")]
    invalid: list[str] = []
    for tenant in sorted(entries):
        try:
            p = TenantPolicy.from_json(entries[tenant])
        except PolicyError as exc:
            invalid.append(f"tenant {tenant}: invalid policy, workers ignore it: {exc}")
            continue
        rows.append(
            (
                tenant,
                p.lane,
                f"{p.weight:g}",
                f"{p.rate_per_s:g}" if p.limited else "unlimited",
                str(p.burst_tokens) if p.limited else "-",
                str(p.max_in_flight) if p.max_in_flight else "default",
                str(p.deadline_ms) if p.deadline_ms else "-",
            )
        )
    widths = [max(len(cell) for cell in column) for column in zip(*rows, strict=True)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for line in invalid:
        print(line)


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from workers.service import run_worker

    run_on(settings.worker.event_loop, run_worker(args.stage, settings))
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from workers.cores import available_cores
    from workers.serve import plan_host, serve, visible_gpus

    if args.gpus is None:
        gpus = visible_gpus()
    elif args.gpus == "none":
        gpus = ()
    else:
        try:
            gpus = tuple(int(d) for d in args.gpus.split(","))
        except ValueError:
            raise CommandError(
                f"--gpus takes device numbers like 0,1 or 'none', got {args.gpus!r}",
                ExitCode.USAGE,
            ) from None
    counts = (args.preprocess, args.inference, args.postprocess)
    if any(n is not None and n < 1 for n in (*counts, args.fused)):
        raise CommandError("process counts must be >= 1", ExitCode.USAGE)
    if args.fused is not None and any(n is not None for n in counts):
        raise CommandError(
            "--fused runs fused workers instead of processes per stage: give one or the other",
            ExitCode.USAGE,
        )
    plan = plan_host(
        available_cores(),
        gpus,
        preprocess=args.preprocess,
        inference=args.inference,
        postprocess=args.postprocess,
        concurrent_runs=settings.runtime.concurrent_runs,
        fused=args.fused or 0,
    )
    return asyncio.run(serve(settings, plan, args.log_dir))


def _gateway(args: argparse.Namespace, settings: Settings) -> int:
    from workers.gateway.service import run_gateway

    given = {"http_port": args.http_port, "grpc_port": args.grpc_port, "processes": args.processes}
    changes = {name: value for name, value in given.items() if value is not None}
    if changes:
        gateway = settings.gateway.model_copy(update=changes)
        settings = settings.model_copy(update={"gateway": gateway})
    if settings.gateway.processes > 1:
        from workers.gateway.processes import run_gateway_processes

        return asyncio.run(run_gateway_processes(settings))
    run_on(settings.gateway.event_loop, run_gateway(settings))
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _keys(args: argparse.Namespace, settings: Settings) -> int:
    from workers.gateway.commands import run_keys_command

    return asyncio.run(run_keys_command(args, settings))


def _models(args: argparse.Namespace, settings: Settings) -> int:
    from workers.commands import build_model

    if args.action != "build":
        from workers.model_commands import run_model_command

        return asyncio.run(run_model_command(args, settings))
    repository = args.repository or settings.model_repository
    started = time.monotonic()
    path = build_model(args.pipeline, repository, args.version, args.precision)
    print(f"built {args.pipeline} into {path} in {time.monotonic() - started:.1f}s")
    return 0


def _submit(args: argparse.Namespace, settings: Settings) -> int:
    from workers.commands import submit

    texts = list(args.text)
    if args.file is not None:
        from workers.commands import texts_from_file

        texts += texts_from_file(args.file)
    if not texts:
        raise CommandError("submit needs texts: arguments, or --file PATH", ExitCode.USAGE)
    return asyncio.run(submit(settings, args.tenant, args.pipeline, texts, args.wait_s))


def _results(args: argparse.Namespace, settings: Settings) -> int:
    from workers.commands import follow_results

    return asyncio.run(until_interrupted(follow_results(settings, args.tenant)))


_CLOSE_GRACE_S = 5.0


def _exit_now() -> None:
    sys.stdout.flush()
    os._exit(ExitCode.INTERRUPTED)


async def until_interrupted(command: Coroutine[Any, Any, int]) -> int:
    """Run a command that goes on until stopped (`results --follow`, `top`): Ctrl-C ends it
    with exit 130 once it has closed its connections (at most 5 s later); a second Ctrl-C
    exits at once.

    The handler is installed explicitly on the loop rather than left to Python's default:
    a process started with SIGINT ignored (a background job of a non-interactive shell, some
    process supervisors) would otherwise never stop on Ctrl-C."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(command)
    interrupts = 0

    def interrupted() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            os._exit(ExitCode.INTERRUPTED)
        task.cancel()
        # Closing connections is bounded: a scrape thread or a connection that does not close
        # (asyncio.run waits for both) must not keep a Ctrl-C'd command alive.
        loop.call_later(_CLOSE_GRACE_S, _exit_now)

    loop.add_signal_handler(signal.SIGINT, interrupted)
    try:
        return await task
    except asyncio.CancelledError:
        if interrupts:
            return ExitCode.INTERRUPTED
        raise
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from workers.commands import status

    return status(settings, args.task_id)


def _top(args: argparse.Namespace, settings: Settings) -> int:
    from workers.names import RedisKeys
    from workers.observability.top import run_top

    keys = RedisKeys(settings.redis.key_prefix)
    return asyncio.run(until_interrupted(run_top(settings.redis, keys, args.interval_s, args.once)))


def _check(args: argparse.Namespace, settings: Settings) -> int:
    from workers.observability.http import check

    port = settings.observability.metrics_port
    url = args.url or f"http://127.0.0.1:{DEFAULT_METRICS_PORT if port is None else port}"
    code, body = check(url)
    print(body.strip())
    return code


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from workers.demo import run_demo

    return run_demo(settings, requests=args.requests, keep_stack=args.keep_stack)


def _add_policy_actions(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    policy = actions.add_parser(
        "set", help="create or change a tenant's policy (options not given keep their value)"
    )
    policy.add_argument("name")
    policy.add_argument(
        "--class", dest="lane", choices=["realtime", "standard", "bulk"], default=None
    )
    policy.add_argument("--weight", type=float, default=None, help="share within its lane (> 0)")
    policy.add_argument("--rate-per-s", type=float, default=None, help="0: unlimited")
    policy.add_argument("--burst", type=int, default=None, help="0: one second's worth")
    policy.add_argument(
        "--max-in-flight", type=int, default=None, help="0: limits.max_pending_tasks_per_tenant"
    )
    policy.add_argument(
        "--deadline-ms", type=int, default=None, help="for requests that carry none; 0: none"
    )
    actions.add_parser("show", help="a tenant's policy as JSON").add_argument("name")
    actions.add_parser("list", help="every tenant's policy")
    actions.add_parser("delete", help="remove a tenant's policy").add_argument("name")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    parser = argparse.ArgumentParser(prog="conveyor", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    handlers: dict[str, Handler] = {}

    stack = commands.add_parser("stack", help="run a real Kafka and Redis locally, without Docker")
    stack.add_argument("action", choices=["up", "down", "status"])
    stack.add_argument(
        "--secure",
        action="store_true",
        help="SASL/SCRAM + ACLs on Kafka, TLS + an ACL user on Redis (or stack.secure)",
    )
    handlers["stack"] = _stack

    worker = commands.add_parser("worker", help="run one pipeline stage until SIGTERM")
    worker.add_argument(
        "stage",
        choices=["preprocess", "inference", "postprocess", "fused"],
        help="fused: the three stages in one process (small hosts, low rates)",
    )
    handlers["worker"] = _worker

    serve = commands.add_parser(
        "serve",
        help="every stage on this host: processes per stage, sized for its cores and GPUs",
    )
    for stage in ("preprocess", "inference", "postprocess"):
        serve.add_argument(
            f"--{stage}", type=int, default=None, metavar="N", help=f"{stage} processes"
        )
    serve.add_argument(
        "--fused",
        type=int,
        default=None,
        metavar="N",
        help="N fused workers (the three stages in one process) instead of processes per stage",
    )
    serve.add_argument(
        "--gpus",
        default=None,
        help="devices for inference processes, e.g. 0,1; 'none': CPU (default: every visible)",
    )
    serve.add_argument("--log-dir", type=Path, default=Path("logs"), help="a log per process")
    handlers["serve"] = _serve

    gateway = commands.add_parser(
        "gateway", help="serve the Open Inference Protocol (KServe V2) over HTTP and gRPC"
    )
    gateway.add_argument("--http-port", type=int, default=None, help="default gateway.http_port")
    gateway.add_argument("--grpc-port", type=int, default=None, help="default gateway.grpc_port")
    gateway.add_argument(
        "--processes",
        type=_positive_int,
        default=None,
        help="gateway processes sharing the ports (default gateway.processes, 1)",
    )
    handlers["gateway"] = _gateway

    keys = commands.add_parser("keys", help="the gateway's API keys: add, list, revoke")
    key_actions = keys.add_subparsers(dest="action", required=True)
    key_actions.add_parser("add", help="a new key for a tenant (printed once)").add_argument(
        "tenant"
    )
    key_actions.add_parser("list", help="key digests and their tenants")
    key_actions.add_parser("revoke", help="remove a key (the key or its digest)").add_argument(
        "key"
    )
    handlers["keys"] = _keys

    models = commands.add_parser("models", help="build models; load, unload, roll back versions")
    actions = models.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="build a model into the model repository")
    build.add_argument("pipeline", choices=["text-embedding", "tiny-classify"])
    build.add_argument("--repository", type=Path, default=None)
    build.add_argument("--version", type=int, default=1)
    build.add_argument(
        "--precision",
        choices=["fp32", "fp16"],
        default="fp32",
        help="fp16: add a float16 variant, served where the provider is CUDA or TensorRT",
    )
    load = actions.add_parser("load", help="every inference worker loads and serves a version")
    load.add_argument("model")
    load.add_argument("version", type=int)
    role = load.add_mutually_exclusive_group()
    role.add_argument("--canary", type=float, metavar="FRACTION", help="serve this share of tasks")
    role.add_argument(
        "--shadow", type=float, metavar="FRACTION", help="shadow this share of batches"
    )
    unload = actions.add_parser("unload", help="every inference worker retires a version")
    unload.add_argument("model")
    unload.add_argument("version", type=int)
    rollback = actions.add_parser("rollback", help="back to the previously current version")
    rollback.add_argument("model")
    actions.add_parser("list", help="versions on disk and the latest model events")
    handlers["models"] = _models

    tenants = commands.add_parser(
        "tenants", help="tenants: topics (add), policies in the registry (set, show, list, delete)"
    )
    tenant_actions = tenants.add_subparsers(dest="action", required=True)
    add = tenant_actions.add_parser("add", help="create a tenant's topics, print its ACLs")
    add.add_argument("name")
    add.add_argument("--principal", default=None, help="the tenant's (default: User:NAME)")
    add.add_argument(
        "--worker-principal", default=None, help="also list the workers' ACLs (e.g. User:conveyor)"
    )
    add.add_argument("--grant", action="store_true", help="grant the ACLs too (as a super user)")
    _add_policy_actions(tenant_actions)
    handlers["tenants"] = _tenants

    submit = commands.add_parser("submit", help="submit texts to a pipeline")
    submit.add_argument("text", nargs="*", help="texts of one request")
    submit.add_argument(
        "--file", type=Path, default=None, help="more texts, one per line (-: stdin)"
    )
    submit.add_argument("--tenant", default="cli")
    submit.add_argument("--pipeline", default="text-embedding")
    submit.add_argument(
        "--wait-s",
        type=float,
        default=None,
        help="wait this long for the result (exit 1 failed, 4 no result in time)",
    )
    handlers["submit"] = _submit

    results = commands.add_parser("results", help="print results as they arrive")
    results.add_argument("--follow", action="store_true", help="keep following (the default)")
    results.add_argument("--tenant", default=None)
    handlers["results"] = _results

    status = commands.add_parser("status", help="a task's state in the ledger")
    status.add_argument("task_id")
    handlers["status"] = _status

    top = commands.add_parser("top", help="live view of stages, lanes, tenants, lag")
    top.add_argument("--interval-s", type=float, default=2.0)
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    handlers["top"] = _top

    check = commands.add_parser(
        "check", help="a worker's health: exit 0 ready, 1 live but not ready, 2 not live"
    )
    check.add_argument("--url", default=None, help="the worker's endpoint (default: local port)")
    handlers["check"] = _check

    demo = commands.add_parser("demo", help="stack + workers + traffic from three tenants")
    demo.add_argument("--requests", type=int, default=300)
    demo.add_argument("--keep-stack", action="store_true", help="leave Kafka and Redis running")
    handlers["demo"] = _demo

    return parser, handlers


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every failure it expects ends as one line on stderr and an
    `ExitCode` (README, "Exit codes"). Anything else is a bug and keeps its traceback."""
    parser, handlers = build_parser()
    args = parser.parse_args(argv)  # usage errors: argparse's message and exit 2
    try:
        settings = load_settings()
    except SettingsError as exc:
        return _fail(str(exc), ExitCode.USAGE)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # aiokafka narrates every join and subscription at INFO; ours is the story worth reading.
    # A one-shot command says itself what failed, in one line: aiokafka's retries stay quiet.
    quiet = logging.WARNING if args.command in _LONG_RUNNING else logging.CRITICAL
    logging.getLogger("aiokafka").setLevel(max(quiet, logging.root.level))
    try:
        return handlers[args.command](args, settings)
    except CommandError as exc:
        return _fail(str(exc), exc.code)
    except StackError as exc:
        return _fail(str(exc), ExitCode.TASK_FAILED)
    except (RepositoryError, SettingsError) as exc:
        return _fail(str(exc), ExitCode.USAGE)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except Exception as exc:
        if (known := explain(exc, settings)) is None:
            raise
        return _fail(str(known), known.code)


_LONG_RUNNING = {"worker", "demo", "gateway"}
"""Commands whose log is worth reading as it goes: aiokafka's warnings stay on."""


def _fail(message: str, code: ExitCode) -> int:
    print(f"conveyor: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
