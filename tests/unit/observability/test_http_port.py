"""The metrics port: a default that is taken falls back to a free one; a set one fails."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from workers.exits import ExitCode, PortTakenError
from workers.observability.http import Health, ObservabilityServer


@pytest.fixture
def held_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _server(port: int, fallback: bool) -> ObservabilityServer:
    return ObservabilityServer(
        CollectorRegistry(),
        lambda: Health(True, True),
        "127.0.0.1",
        port,
        fallback_to_free=fallback,
    )


async def test_a_taken_default_port_falls_back_and_says_so_in_one_line(
    held_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="workers.observability.http"):
        async with _server(held_port, fallback=True) as server:
            port = server.port
            assert port not in (held_port, 0)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert f"metrics port {held_port} is taken" in message
    assert f"http://127.0.0.1:{port} instead" in message


async def test_a_taken_port_that_was_set_is_an_error_with_its_own_exit_code(
    held_port: int,
) -> None:
    with pytest.raises(
        PortTakenError, match=rf"metrics port {held_port} on 127.0.0.1 is taken"
    ) as e:
        await _server(held_port, fallback=False).start()
    assert e.value.code == ExitCode.PORT_TAKEN
