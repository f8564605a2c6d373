"""One ONNX Runtime build per install choice, and a set-up that touches nothing it did not start."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).parents[3]
BUILDS = {"onnxruntime", "onnxruntime-gpu"}


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[=<>!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_each_extra_brings_exactly_one_onnxruntime_build() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not _names(project["dependencies"]) & BUILDS, "a build in the base dependencies"
    extras = project["optional-dependencies"]
    assert _names(extras["cpu"]) & BUILDS == {"onnxruntime"}
    assert _names(extras["gpu"]) & BUILDS == {"onnxruntime-gpu"}
    for name, requirements in extras.items():
        if name not in ("cpu", "gpu"):
            assert not _names(requirements) & BUILDS, f"extra {name} brings an ORT build"


def test_setup_installs_the_cpu_build_and_never_stops_processes_by_name() -> None:
    run = (REPO / "ops" / "run").read_text()
    assert "install -q -e '.[cpu,dev]'" in run
    for command in ("pkill", "killall", "service ", "systemctl", "apt-get install"):
        assert command not in run, command


def test_image_installs_one_build_chosen_by_extras() -> None:
    dockerfile = (REPO / "ops" / "docker" / "Dockerfile").read_text()
    assert 'ARG EXTRAS="[cpu]"' in dockerfile
    assert "pip uninstall" not in dockerfile
