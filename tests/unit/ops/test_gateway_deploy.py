"""The gateway's compose service and Kubernetes manifests run a real command with valid
settings and probe the gateway's own health routes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from workers.cli import build_parser
from workers.settings import load_settings

REPO = Path(__file__).resolve().parents[3]


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_compose_gateway_runs_the_gateway_command(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    gateway = compose["services"]["gateway"]
    parser, handlers = build_parser()
    assert parser.parse_args(gateway["command"]).command == "gateway" in handlers
    for name, value in gateway["environment"].items():
        monkeypatch.setenv(name, str(value))
    settings = load_settings()
    # A host port may be moved by a variable (`${GATEWAY_HTTP_HOST_PORT:-8000}`): its default.
    ports = [re.sub(r"\$\{\w+:-(\d+)\}", r"\1", port) for port in gateway["ports"]]
    assert ports == [
        f"{settings.gateway.http_port}:{settings.gateway.http_port}",
        f"{settings.gateway.grpc_port}:{settings.gateway.grpc_port}",
    ]
    assert "/v2/health/ready" in " ".join(gateway["healthcheck"]["test"])


def test_kubernetes_gateway_is_a_stateful_set_behind_a_service() -> None:
    base = REPO / "ops" / "k8s" / "base"
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    assert "gateway.yaml" in kustomization["resources"]
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _load_all(base / "gateway.yaml")}
    stateful = docs[("StatefulSet", "conveyor-gateway")]
    (container,) = stateful["spec"]["template"]["spec"]["containers"]
    parser, _ = build_parser()
    assert parser.parse_args(container["args"]).command == "gateway"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    (instance,) = container["env"]
    assert instance["name"] == "CONVEYOR_GATEWAY__INSTANCE_ID"
    service = docs[("Service", "conveyor-gateway")]
    assert {p["port"] for p in service["spec"]["ports"]} == {8000, 8001}
    assert ("PodDisruptionBudget", "conveyor-gateway") in docs
