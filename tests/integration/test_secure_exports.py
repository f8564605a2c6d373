"""`conveyor stack up --secure` prints exports a client copies as they are: run in a shell
they give settings that reach the secured broker (its address included) and Redis."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from tests.services import SecureServices
from workers.cli import _print_secure_settings
from workers.client import Client
from workers.kafka.admin import delete_topics_with_prefix
from workers.ledger.connection import redis_client
from workers.names import Topics
from workers.service import ensure_pipeline_topics
from workers.settings import load_settings
from workers.stack import StackConfig
from workers.stack.secure import SecureAccess, client_exports

pytestmark = pytest.mark.integration


def test_the_printout_holds_the_bootstrap_address_and_every_setting(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = StackConfig(state_dir=tmp_path, kafka_port=19093, redis_port=16380, secure=True)
    _print_secure_settings(config, SecureAccess(tmp_path / "secrets dir"))
    printed = capsys.readouterr().out
    assert "export CONVEYOR_KAFKA__BOOTSTRAP=127.0.0.1:19093" in printed
    assert "CONVEYOR_REDIS__URL=" in printed
    assert "'" in printed  # a path with a space is quoted: the line copies as it is


async def test_the_exports_reach_the_secured_stack(
    secure_services: SecureServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = client_exports(
        secure_services.kafka_bootstrap, secure_services.redis_url, secure_services.access
    )
    shell = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        "\n".join([*lines, "env"]),
        env={"PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await shell.communicate()
    assert shell.returncode == 0
    for line in out.decode().splitlines():
        name, _, value = line.partition("=")
        if name.startswith("CONVEYOR_"):
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    prefix = f"x{uuid.uuid4().hex[:8]}"
    settings = load_settings(kafka={"topic_prefix": prefix})
    assert settings.kafka.bootstrap == secure_services.kafka_bootstrap
    await ensure_pipeline_topics(settings)
    try:
        async with Client(settings.kafka, Topics(prefix)):
            pass
        redis = redis_client(settings.redis)
        try:
            assert await redis.ping()
        finally:
            await redis.aclose()
    finally:
        await delete_topics_with_prefix(settings.kafka, prefix)
