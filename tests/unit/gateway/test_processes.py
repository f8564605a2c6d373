"""The port a multi-process gateway holds (no broker needed)."""

from __future__ import annotations

import socket

import pytest

from workers.cli import build_parser
from workers.exits import ExitCode, PortTakenError
from workers.gateway.processes import held_port


def test_a_free_port_is_held_for_processes_that_reuse_it() -> None:
    with held_port("127.0.0.1", 0, "gateway.http_port") as port:
        assert port > 0
        # A gateway process binds beside the supervisor's socket and listens...
        shared = socket.socket()
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        shared.bind(("127.0.0.1", port))
        shared.listen()
        shared.close()
        # ...but a program without SO_REUSEPORT cannot take the port meanwhile.
        with socket.socket() as other, pytest.raises(OSError, match="in use"):
            other.bind(("127.0.0.1", port))


def test_a_port_another_program_holds_is_a_port_taken_error() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        with (
            pytest.raises(PortTakenError, match=f"gateway.grpc_port {taken} is taken") as error,
            held_port("127.0.0.1", taken, "gateway.grpc_port"),
        ):
            pass
    assert error.value.code == ExitCode.PORT_TAKEN


def test_processes_must_be_positive() -> None:
    parser, _ = build_parser()
    assert parser.parse_args(["gateway", "--processes", "3"]).processes == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["gateway", "--processes", "0"])
