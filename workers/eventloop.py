"""The event loop a long-lived process runs on: uvloop or the standard library's
(`worker.event_loop`, `gateway.event_loop`)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Literal

EventLoop = Literal["uvloop", "asyncio"]


def run_on(event_loop: EventLoop, main: Coroutine[Any, Any, None]) -> None:
    """`main` to completion on the named loop."""
    if event_loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


def running_loop_name() -> str:
    """ "uvloop" or "asyncio": which loop runs the caller, for its start-up log line."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]
