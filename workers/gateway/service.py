"""`conveyor gateway`: the gateway core and its HTTP and gRPC listeners in one process.

SIGTERM (or Ctrl-C): readiness turns off at once, the listeners stop taking requests and
let those in progress finish (within `worker.shutdown_grace_s`), then the Kafka client
flushes and stops. A second Ctrl-C exits at once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from contextlib import AsyncExitStack

from workers.eventloop import running_loop_name
from workers.gateway.core import Gateway
from workers.gateway.errors import port_taken
from workers.gateway.grpc_service import GrpcFront
from workers.gateway.http import HttpFront
from workers.gc_tuning import tune_garbage_collection
from workers.settings import Settings
from workers.signals import on_stop_signals

log = logging.getLogger(__name__)


async def run_gateway(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT."""
    config = settings.gateway
    grace_s = settings.worker.shutdown_grace_s
    stop = asyncio.Event()
    on_stop_signals(lambda _name: stop.set())
    async with AsyncExitStack() as stack:
        gateway = await stack.enter_async_context(Gateway(settings))
        http = HttpFront(gateway, config.http_host, config.http_port, grace_s)
        grpc = GrpcFront(gateway, config.http_host, config.grpc_port, grace_s)
        await _listen(stack, http, "gateway.http_port", config.http_port)
        await _listen(stack, grpc, "gateway.grpc_port", config.grpc_port)
        tune_garbage_collection(config.gc_threshold)
        # One line that scripts and tests wait on: both listeners are bound.
        log.info(
            "gateway ready: http %d grpc %d (instance %s, event loop %s)",
            http.port,
            grpc.port,
            gateway.instance_id,
            running_loop_name(),
        )
        await stop.wait()
        log.info("gateway stopping: readiness off, finishing requests in progress")
        gateway.stopping()


async def _listen(
    stack: AsyncExitStack, front: HttpFront | GrpcFront, setting: str, port: int
) -> None:
    """Bind a listener; a port another process holds ends the command with exit code 5."""
    try:
        await stack.enter_async_context(front)
    except (OSError, RuntimeError) as exc:  # grpc says RuntimeError("Failed to bind ...")
        if isinstance(exc, OSError) and exc.errno != errno.EADDRINUSE:
            raise
        if isinstance(exc, RuntimeError) and "bind" not in str(exc).lower():
            raise
        raise port_taken(setting, port) from None
