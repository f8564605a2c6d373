"""The README's "The native stack on its own" and "Running it by hand" blocks, run as written.

The commands are read from the README's ```bash blocks under those headings, so the test
follows the README when it changes. What differs from a person at a terminal:

- the commands run in a temporary folder (its `.stack/` and `model_repository/`), with
  `.venv/bin/conveyor` the project's own;
- the stack listens on free ports (`CONVEYOR_STACK__*_PORT`, and `KAFKA_BOOTSTRAP` /
  `REDIS_URL` for the rest), so it never meets a stack already on 9092 or 6379; it is stopped
  last (the by-hand block runs against it, between `stack status` and `stack down`);
- a person waits for the workers before submitting: so does the test (their logs say
  "assigned"), and `check --url http://127.0.0.1:9400` goes to the port the first worker
  announced in Redis (9400 itself unless another process on this host holds it);
- commands that run until stopped (`results --follow`, `top`) run in the background, are
  read until they show what they promise, then get Ctrl-C (exit 130).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from workers.models.builders import find_minilm_package_dir

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).parents[2]
README = REPO / "README.md"
CONVEYOR = ".venv/bin/conveyor"
README_METRICS_URL = "http://127.0.0.1:9400"


def readme_block(heading: str) -> list[list[str]]:
    """The commands of the first ```bash block under `heading`, as a shell splits them
    (quotes kept together, comments dropped)."""
    text = README.read_text()
    start = text.index(f"\n{heading}\n")
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S)
    assert block is not None, f"README lost the bash block under {heading!r}"
    next_heading = re.search(r"\n#+ ", text[start + 1 :])
    assert next_heading is None or block.start() < next_heading.start(), heading
    commands = [shlex.split(line, comments=True) for line in block.group(1).splitlines()]
    return [words for words in commands if words]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Shell:
    """Runs README commands as a shell would, in `cwd`, with `env`."""

    cwd: Path
    env: dict[str, str]
    background: list[tuple[list[str], subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def argv(self, command: list[str]) -> list[str]:
        words = command[:-1] if command[-1] == "&" else command
        assert words[0] == CONVEYOR, f"README command not run by the test: {command}"
        return [sys.executable, "-m", "workers", *words[1:]]

    def run(self, command: list[str], timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(command),
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def start(self, command: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        """`command &`: output to a log file of its own."""
        log_path = self.cwd / f"bg-{len(self.background)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                self.argv(command),
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.background.append((self.argv(command), process, log_path))
        return process, log_path

    def stop_all(self) -> None:
        for _, process, _ in self.background:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process, _ in self.background:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_for(log_path: Path, text: str, process: subprocess.Popen[bytes], timeout_s: float) -> str:
    """The log once it contains `text`; fails early if the process exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        log = log_path.read_text(errors="replace")
        if text in log:
            return log
        assert process.poll() is None, f"exited {process.returncode} before {text!r}:\n{log}"
        assert time.monotonic() < deadline, f"no {text!r} in {timeout_s}s:\n{log[-3000:]}"
        time.sleep(0.2)


def interrupt(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGINT)
    return process.wait(30)


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    try:
        find_minilm_package_dir()
    except FileNotFoundError as exc:
        pytest.skip(f"MiniLM weights unavailable: {exc}")
    kafka_port, controller_port, redis_port = _free_port(), _free_port(), _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")},
        "CONVEYOR_CONFIG": "",
        "CONVEYOR_STACK__KAFKA_PORT": str(kafka_port),
        "CONVEYOR_STACK__KAFKA_CONTROLLER_PORT": str(controller_port),
        "CONVEYOR_STACK__REDIS_PORT": str(redis_port),
        "KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka_port}",
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "PYTHONPATH": str(REPO),
    }
    found = Shell(tmp_path, env)
    try:
        yield found
    finally:
        found.stop_all()
        found.run([CONVEYOR, "stack", "down"], timeout_s=120)  # idempotent


def _announced_metrics_urls(redis_url: str) -> dict[str, list[str]]:
    """stage -> metrics base URLs the workers announced in Redis (default key prefix)."""
    client = redis.Redis.from_url(redis_url)
    try:
        found: dict[str, list[str]] = {}
        for key in client.scan_iter(match="conveyor:worker:*"):
            fields: dict[bytes, bytes] = client.hgetall(key)  # type: ignore[assignment]
            url = fields[b"metrics_url"].decode()
            port = url.rsplit(":", 1)[1].removesuffix("/metrics")
            found.setdefault(fields[b"stage"].decode(), []).append(f"http://127.0.0.1:{port}")
        return found
    finally:
        client.close()


def test_readme_native_stack_and_running_by_hand(shell: Shell) -> None:  # noqa: C901
    stack_block = readme_block("### The native stack on its own")
    by_hand = readme_block("### Running it by hand")
    assert [c[1:3] for c in stack_block] == [
        ["stack", "up"],
        ["stack", "status"],
        ["stack", "down"],
    ], stack_block
    up, status, down = stack_block

    done = shell.run(up, timeout_s=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stack up in" in done.stdout
    done = shell.run(status)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"kafka.*ready", done.stdout, re.I), done.stdout
    assert re.search(r"redis.*ready", done.stdout, re.I), done.stdout

    task_id = ""
    for command in by_hand:
        action = command[1]
        if command[-1] == "&":
            assert action == "worker", command
            process, log_path = shell.start(command)
            wait_for(log_path, ": assigned [", process, timeout_s=180)
            continue
        if action == "results":
            # Follows until stopped: start it, submit once more, see the result arrive.
            follower, log_path = shell.start(command)
            wait_for(log_path, "following results", follower, timeout_s=60)
            submit = next(c for c in by_hand if c[1] == "submit")
            again = shell.run(submit)
            assert again.returncode == 0, again.stdout + again.stderr
            second_id = again.stdout.splitlines()[0]
            log = wait_for(log_path, second_id, follower, timeout_s=60)
            line = next(x for x in log.splitlines() if second_id in x)
            assert json.loads(line)["tenant"] == "acme", line
            assert interrupt(follower) == 130
            continue
        if action == "top":
            viewer, log_path = shell.start(command)
            for stage in ("preprocess", "inference", "postprocess"):
                wait_for(log_path, stage, viewer, timeout_s=60)
            assert interrupt(viewer) == 130
            continue
        if action == "status":
            assert task_id, "README runs status before submit"
            command = [task_id if word == "<task-id>" else word for word in command]
        if action == "check":
            urls = _announced_metrics_urls(shell.env["REDIS_URL"])
            # The first worker started (preprocess) took 9400 unless another process holds
            # it; every worker is up, each on a port of its own.
            assert sorted(urls) == ["inference", "postprocess", "preprocess"], urls
            ports = [u for us in urls.values() for u in us]
            assert len(set(ports)) == len(ports) == 3, urls
            url = urls["preprocess"][0]
            command = [url if word == README_METRICS_URL else word for word in command]
        done = shell.run(command)
        assert done.returncode == 0, f"{command}: {done.returncode}\n{done.stdout}{done.stderr}"
        out = done.stdout
        if action == "models":
            assert (shell.cwd / "model_repository/all-minilm-l6-v2/1/model.onnx").exists(), out
        elif action == "submit":
            task_id, answer = out.splitlines()[0], json.loads(out.splitlines()[1])
            assert answer["status"] == "DONE", answer
            assert answer["outputs"]["embedding"]["shape"] == [2, 384], answer
        elif action == "status":
            record = json.loads(out)
            assert record["state"] == "DONE", record
            assert record["task_id"] == task_id, record
        elif action == "check":
            health = json.loads(out)
            assert health["live"], health
            assert health["ready"], health
        else:
            pytest.fail(f"README command the test does not know: {command}")

    # Several workers on one host: every one alive, the later ones on a port of their own.
    workers = [(argv, p, log) for argv, p, log in shell.background if "worker" in argv]
    assert len(workers) == 3
    for argv, process, log_path in workers:
        assert process.poll() is None, f"{argv} died:\n{log_path.read_text()[-3000:]}"
    logs = [log.read_text() for _, _, log in workers]
    assert not any("Address already in use" in log for log in logs)
    # The first took 9400, or found it held by a process outside the test, as the rest did.
    first_took_it = "metrics and health on http://0.0.0.0:9400" in logs[0]
    for log in logs[1:] if first_took_it else logs:
        assert "metrics port 9400 is taken" in log, log[-2000:]

    shell.stop_all()
    for argv, process, log_path in workers:
        assert process.returncode == 0, f"{argv}: {process.returncode}\n{log_path.read_text()}"
    done = shell.run(down, timeout_s=120)
    assert done.returncode == 0, done.stdout + done.stderr
