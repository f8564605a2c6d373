"""`conveyor tenants set|show|list|delete` against the real Redis, configured the way an
operator configures it: `CONVEYOR_REDIS__*` environment variables."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Protocol

import orjson
import pytest
import redis.asyncio as aioredis

from tests.conftest import Namespace
from tests.services import Services
from workers.cli import main
from workers.lanes.registry import TenantPolicy, TenantRegistry
from workers.names import RedisKeys


class Conveyor(Protocol):
    async def __call__(self, *argv: str) -> tuple[int, str, str]:
        """`conveyor tenants *argv`: exit code, stdout, stderr."""
        ...


@pytest.fixture
def env(services: Services, namespace: Namespace) -> dict[str, str]:
    return {
        "CONVEYOR_REDIS__URL": services.redis_url,
        "CONVEYOR_REDIS__KEY_PREFIX": namespace.key_prefix,
    }


@pytest.fixture
def conveyor(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Conveyor:
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    async def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        # main() runs its own event loop (asyncio.run), so it gets a thread of its own.
        code = await asyncio.to_thread(main, ["tenants", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


async def test_set_then_show_then_list_then_delete(
    conveyor: Conveyor, redis_client: aioredis.Redis, namespace: Namespace
) -> None:
    code, out, _ = await conveyor("set", "acme", "--class", "realtime", "--weight", "3")
    assert code == 0
    assert orjson.loads(out)["lane"] == "realtime"
    code, out, _ = await conveyor("set", "acme", "--rate-per-s", "50", "--deadline-ms", "200")
    assert code == 0

    expected = TenantPolicy(lane="realtime", weight=3.0, rate_per_s=50.0, deadline_ms=200)
    registry = TenantRegistry(redis_client, RedisKeys(namespace.key_prefix))
    assert await registry.get("acme") == expected
    code, out, _ = await conveyor("show", "acme")
    assert code == 0
    assert TenantPolicy.from_json(out) == expected

    await conveyor("set", "globex", "--max-in-flight", "10", "--burst", "4")
    code, out, _ = await conveyor("list")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == [
        "TENANT",
        "CLASS",
        "WEIGHT",
        "RATE/S",
        "BURST",
        "MAX-IN-FLIGHT",
        "DEADLINE-MS",
    ]
    assert [row.split() for row in rows] == [
        ["acme", "realtime", "3", "50", "50", "default", "200"],
        ["globex", "standard", "1", "unlimited", "-", "10", "-"],
    ]

    code, out, _ = await conveyor("delete", "acme")
    assert (code, out.strip()) == (0, "tenant acme: policy deleted")
    assert await registry.get("acme") is None


async def test_unknown_tenants_exit_1_with_a_clear_message(
    conveyor: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = await conveyor("show", "nobody")
    assert (code, out) == (1, "")
    assert "tenant 'nobody' has no policy; it is served as lane standard" in err

    monkeypatch.setenv("CONVEYOR_LANES__UNKNOWN_TENANTS", "reject")
    code, _, err = await conveyor("show", "nobody")
    assert code == 1
    assert "rejected" in err

    code, _, err = await conveyor("delete", "nobody")
    assert code == 1
    assert "has no policy" in err


async def test_a_first_set_starts_from_the_lane_settings(
    conveyor: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_LANES__DEFAULT_CLASS", "bulk")
    code, out, _ = await conveyor("set", "acme", "--rate-per-s", "2")
    assert code == 0
    assert TenantPolicy.from_json(out) == TenantPolicy(lane="bulk", rate_per_s=2.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["set", "acme", "--weight", "0"], "weight must be a finite number > 0, got 0.0"),
        (["set", "acme", "--burst", "-1"], "burst must be an integer >= 0, got -1"),
        (["set", "ac.me"], "tenant 'ac.me' is not a valid name"),
    ],
)
async def test_invalid_policies_exit_2_and_store_nothing(
    conveyor: Conveyor, argv: list[str], message: str
) -> None:
    code, _, err = await conveyor(*argv)
    assert code == 2
    assert message in err
    code, out, _ = await conveyor("list")
    assert out.splitlines()[1:] == []


async def test_list_reports_an_unreadable_entry(
    conveyor: Conveyor, redis_client: aioredis.Redis, namespace: Namespace
) -> None:
    await redis_client.hset(RedisKeys(namespace.key_prefix).tenants(), "broken", b"{")
    code, out, _ = await conveyor("list")
    assert code == 0
    assert "tenant broken: invalid policy, workers ignore it" in out


async def test_the_installed_command(env: dict[str, str]) -> None:
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "workers", "tenants", "set", "acme", "--class", "bulk"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["lane"] == "bulk"
