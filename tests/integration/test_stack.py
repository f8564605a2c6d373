"""The native launcher: idempotent up, clean down, clear messages when something is missing."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from workers.stack import NativeStack, StackConfig, StackError

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")


def test_up_twice_is_harmless_and_down_leaves_no_process(tmp_path: Path) -> None:
    stack = NativeStack(
        StackConfig(
            state_dir=tmp_path,
            kafka_port=_free_port(),
            kafka_controller_port=_free_port(),
            redis_port=_free_port(),
        )
    )
    try:
        first = {s.name: s for s in stack.up()}
        second = {s.name: s for s in stack.up()}
        assert all(s.ready for s in first.values())
        assert {n: s.pid for n, s in second.items()} == {n: s.pid for n, s in first.items()}
        pids = [s.pid for s in first.values() if s.pid is not None]
        assert len(pids) == 2
    finally:
        stack.down()
    assert not any(_alive(pid) for pid in pids)
    assert not any(s.pid or s.ready for s in stack.status())


def test_a_port_taken_by_someone_else_is_refused(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        stack = NativeStack(StackConfig(state_dir=tmp_path, redis_port=port))
        with pytest.raises(StackError, match=f"port {port} is taken"):
            stack.up_redis()


def test_missing_java_or_maven_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    stack = NativeStack(
        StackConfig(state_dir=tmp_path, cache_dir=tmp_path / "cache", kafka_port=_free_port())
    )
    with pytest.raises(StackError, match=r"`java` is not on PATH.*Java 17"):
        stack.up_kafka()
    with pytest.raises(StackError, match=r"`mvn` is not on PATH.*Maven"):
        stack.kafka_jars()
