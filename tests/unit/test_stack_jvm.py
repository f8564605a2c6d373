"""The native stack's broker JVM: the quick JIT on small machines (no broker started)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest

from workers.settings import SettingsError, load_settings
from workers.stack import NativeStack, StackConfig

QUICK = "-XX:TieredStopAtLevel=1"


@pytest.mark.parametrize(
    ("jit", "cores", "quick"),
    [
        ("quick", 64, True),
        ("full", 2, False),
        ("auto", 2, True),
        ("auto", 4, True),
        ("auto", 16, False),
    ],
)
def test_the_broker_compiles_quickly_where_cores_are_few(
    jit: Literal["auto", "quick", "full"],
    cores: int,
    quick: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("workers.stack.native.available_cores", lambda: cores)
    options = NativeStack(StackConfig(state_dir=tmp_path, kafka_jit=jit))._jvm_options()
    assert (QUICK in options) is quick
    assert "-XX:+UseG1GC" in options


def test_the_setting_reaches_the_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.cli import stack_config

    monkeypatch.setenv("CONVEYOR_STACK__KAFKA_JIT", "full")
    assert stack_config(load_settings()).kafka_jit == "full"
    monkeypatch.setenv("CONVEYOR_STACK__KAFKA_JIT", "fast")
    with pytest.raises(SettingsError, match="kafka_jit"):
        load_settings()
