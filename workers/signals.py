"""How a long-running process (a worker, the gateway) takes SIGTERM and Ctrl-C."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable


def on_stop_signals(stop: Callable[[str], None]) -> None:
    """SIGTERM or SIGINT calls `stop` with the signal's name, once per signal; a second Ctrl-C
    exits at once (130): the operator does not want to wait for the drain."""
    loop = asyncio.get_running_loop()
    interrupts = 0

    def on_signal(signum: int) -> None:
        nonlocal interrupts
        interrupts += 1
        if signum == signal.SIGINT and interrupts > 1:
            raise SystemExit(130)
        stop(signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
