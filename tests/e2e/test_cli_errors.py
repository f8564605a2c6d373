"""Each kind of `conveyor` failure: one line on stderr and its documented exit code."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Namespace
from tests.e2e.conftest import Pipeline
from tests.services import Services
from workers.exits import ExitCode
from workers.service import ensure_pipeline_topics
from workers.settings import load_settings

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def conveyor(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers", *args],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")},
            "CONVEYOR_CONFIG": "",
            **env,
        },
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The error line: stderr is exactly one line, `conveyor: ...`, and no traceback."""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("conveyor: "), lines[0]
    return lines[0]


@pytest.fixture
def nothing_listening() -> dict[str, str]:
    """Kafka and Redis addresses where nothing answers."""
    return {
        "KAFKA_BOOTSTRAP": f"127.0.0.1:{_free_port()}",
        "REDIS_URL": f"redis://:hunter2@127.0.0.1:{_free_port()}/0",
    }


@pytest.fixture
def live_env(services: Services, namespace: Namespace) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP": services.kafka_bootstrap,
        "REDIS_URL": services.redis_url,
        "CONVEYOR_KAFKA__TOPIC_PREFIX": namespace.topic_prefix,
        "CONVEYOR_REDIS__KEY_PREFIX": namespace.key_prefix,
    }


def test_submit_with_the_broker_down_is_unreachable(nothing_listening: dict[str, str]) -> None:
    done = conveyor("submit", "hello", env=nothing_listening)
    assert done.returncode == ExitCode.UNREACHABLE
    line = one_line(done)
    assert f"cannot reach Kafka at {nothing_listening['KAFKA_BOOTSTRAP']}" in line
    assert "conveyor stack up" in line


def test_status_with_redis_down_is_unreachable_and_hides_the_password(
    nothing_listening: dict[str, str],
) -> None:
    done = conveyor("status", "some-task", env=nothing_listening)
    assert done.returncode == ExitCode.UNREACHABLE
    line = one_line(done)
    assert "cannot reach Redis at redis://:***@127.0.0.1:" in line
    assert "hunter2" not in done.stderr


def test_a_worker_with_the_broker_down_is_unreachable(
    nothing_listening: dict[str, str], model_repository: Path, tmp_path: Path
) -> None:
    env = {
        **nothing_listening,
        "CONVEYOR_OBSERVABILITY__METRICS_PORT": "0",
        "CONVEYOR_MODEL_REPOSITORY": str(model_repository),
    }
    done = conveyor("worker", "preprocess", env=env, cwd=tmp_path)
    assert done.returncode == ExitCode.UNREACHABLE
    assert done.stderr.strip().splitlines()[-1].startswith("conveyor: cannot reach Kafka at")
    assert "Traceback" not in done.stderr


async def test_submit_wait_without_workers_times_out(live_env: dict[str, str]) -> None:
    settings = load_settings(
        kafka={
            "bootstrap": live_env["KAFKA_BOOTSTRAP"],
            "topic_prefix": live_env["CONVEYOR_KAFKA__TOPIC_PREFIX"],
        }
    )
    await ensure_pipeline_topics(settings)  # the topics, and no worker to answer
    done = await asyncio.to_thread(conveyor, "submit", "--wait-s", "1", "hello", env=live_env)
    assert done.returncode == ExitCode.TIMEOUT
    task_id = done.stdout.strip()
    assert f"no result for task {task_id} within 1s" in one_line(done)


async def test_submit_before_any_worker_made_the_topics(live_env: dict[str, str]) -> None:
    done = await asyncio.to_thread(conveyor, "submit", "hello", env=live_env)
    assert done.returncode == ExitCode.UNREACHABLE
    assert "start one first" in one_line(done)


async def test_submit_to_an_unknown_pipeline_is_a_failed_task(
    pipeline: Pipeline, live_env: dict[str, str]
) -> None:
    pipeline.fleet.start("preprocess")
    done = await asyncio.to_thread(
        conveyor, "submit", "--pipeline", "no-such-pipeline", "--wait-s", "90", "hi", env=live_env
    )
    assert done.returncode == ExitCode.TASK_FAILED, done.stderr
    line = one_line(done)
    assert "FAILED at preprocess: UNKNOWN_PIPELINE" in line
    assert '"code": "UNKNOWN_PIPELINE"' in done.stdout


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read"),
        (b"\xff\xfeabc\n", "is not UTF-8 text: byte 0xff at offset 0"),
        (b"\n  \n", "holds no text"),
    ],
)
def test_submit_with_a_bad_file_is_a_usage_error(
    content: bytes | None, expected: str, tmp_path: Path, nothing_listening: dict[str, str]
) -> None:
    path = tmp_path / "texts.txt"
    if content is not None:
        path.write_bytes(content)
    done = conveyor("submit", "--file", str(path), env=nothing_listening)
    assert done.returncode == ExitCode.USAGE
    assert expected in one_line(done)


def test_bad_settings_and_arguments_are_usage_errors(
    tmp_path: Path, nothing_listening: dict[str, str]
) -> None:
    config = tmp_path / "conveyor.toml"
    config.write_text("log_level = \n")
    done = conveyor("status", "x", env={**nothing_listening, "CONVEYOR_CONFIG": str(config)})
    assert done.returncode == ExitCode.USAGE
    assert "is not valid TOML" in one_line(done)
    done = conveyor("status", "x", env={**nothing_listening, "CONVEYOR_CONFIG": "nope.toml"})
    assert done.returncode == ExitCode.USAGE
    assert "CONVEYOR_CONFIG names nope.toml" in one_line(done)
    assert conveyor("submit", "--no-such-option", env=nothing_listening).returncode == 2
    done = conveyor("serve", "--fused", "2", "--preprocess", "2", env=nothing_listening)
    assert done.returncode == ExitCode.USAGE
    assert "give one or the other" in one_line(done)


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port another process (this test) listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_a_worker_whose_set_port_is_taken_exits_with_its_own_code(
    held_port: int, nothing_listening: dict[str, str], model_repository: Path, tmp_path: Path
) -> None:
    env = {
        **nothing_listening,
        "CONVEYOR_MODEL_REPOSITORY": str(model_repository),
        "CONVEYOR_OBSERVABILITY__METRICS_HOST": "127.0.0.1",
        "CONVEYOR_OBSERVABILITY__METRICS_PORT": str(held_port),
    }
    done = conveyor("worker", "postprocess", env=env, cwd=tmp_path)
    assert done.returncode == ExitCode.PORT_TAKEN
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"conveyor: metrics port {held_port} on 127.0.0.1 is taken"), line
    assert "Traceback" not in done.stderr


def test_ctrl_c_ends_a_follower_even_where_sigint_was_ignored(
    live_env: dict[str, str], tmp_path: Path
) -> None:
    """A background job of a non-interactive shell starts with SIGINT ignored; `results
    --follow` and `top` still end on Ctrl-C, with exit 130."""
    settings = load_settings(
        kafka={
            "bootstrap": live_env["KAFKA_BOOTSTRAP"],
            "topic_prefix": live_env["CONVEYOR_KAFKA__TOPIC_PREFIX"],
        }
    )
    asyncio.run(ensure_pipeline_topics(settings))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")},
        "CONVEYOR_CONFIG": "",
        **live_env,
    }
    for command in ("results --follow", "top"):
        log_path = tmp_path / "follower.log"
        with log_path.open("wb") as log:
            follower = subprocess.Popen(
                ["bash", "-c", f"trap '' INT; exec {sys.executable} -m workers {command}"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while not log_path.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.1)  # until it runs: its first line (results) or screen (top)
        follower.send_signal(signal.SIGINT)
        try:
            code = follower.wait(30)
        finally:
            if follower.poll() is None:
                follower.kill()
        assert code == ExitCode.INTERRUPTED, (command, log_path.read_text(errors="replace"))
