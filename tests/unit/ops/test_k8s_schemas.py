"""The Kubernetes manifests as `kubectl apply -k` sends them: the `kubectl kustomize` output of
each overlay, validated offline against the Kubernetes schemas (kubernetes-validate ships them),
KEDA's ScaledObjects against the shape KEDA documents, and holding what the README promises:
probes, a PodDisruptionBudget and a ScaledObject per stage."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs; types-jsonschema is not a dev dep
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

K8S = Path(__file__).resolve().parents[3] / "ops" / "k8s"
# The oldest Kubernetes still supported upstream when this was written: manifests valid there
# use no API a current cluster has removed.
KUBERNETES_VERSION = "1.32.0"
PROBED_PORT = 9400

# keda.sh/docs/2.17/reference/scaledobject-spec: the fields a ScaledObject may have (KEDA's CRD
# rejects others) and the types it requires; trigger metadata values are strings.
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}},
        },
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string"},
                        "kind": {"type": "string"},
                        "apiVersion": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {"type": "object"},
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "behavior": {"type": "object"},
                            },
                        },
                        "scalingModifiers": {"type": "object"},
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "useCachedMetrics": {"type": "boolean"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "metadata": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                            "authenticationRef": {"type": "object"},
                        },
                    },
                },
            },
        },
    },
}


@pytest.fixture(scope="module", params=["", "gpu"], ids=["cpu", "gpu"])
def applied(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    """What `kubectl apply -k ops/k8s[/gpu]` sends to the cluster."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the machine image has it)")
    built = subprocess.run(
        [kubectl, "kustomize", str(K8S / request.param)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc is not None]


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_every_kubernetes_object_is_valid_for_its_schema(applied: list[dict[str, Any]]) -> None:
    for doc in applied:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        # strict: a misspelt or misplaced field is an error, as `kubectl apply` reports it.
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_scaled_objects_have_keda_shape(applied: list[dict[str, Any]]) -> None:
    scaled = of_kind(applied, "ScaledObject")
    assert scaled
    for so in scaled.values():
        jsonschema.validate(so, SCALED_OBJECT_SCHEMA)


def test_a_misspelt_field_is_caught() -> None:
    """The validation above can fail: a field Kubernetes does not know is an error."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "x", "image": "x", "readinessProbes": {}}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    so: dict[str, Any] = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject"}
    so |= {"metadata": {"name": "x", "namespace": "x"}}
    so |= {"spec": {"scaleTargetRef": {"name": "x"}, "triggers": [{"type": "kafka"}]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(so, SCALED_OBJECT_SCHEMA)


def test_every_workload_is_probed_budgeted_and_scaled(applied: list[dict[str, Any]]) -> None:
    """README "Kubernetes": probes on every workload, a PodDisruptionBudget each, a KEDA
    ScaledObject per stage Deployment (the gateway StatefulSet is not scaled on lag)."""
    workloads = of_kind(applied, "Deployment") | of_kind(applied, "StatefulSet")
    budgets = [pdb["spec"]["selector"] for pdb in of_kind(applied, "PodDisruptionBudget").values()]
    scaled = {
        so["spec"]["scaleTargetRef"]["name"] for so in of_kind(applied, "ScaledObject").values()
    }
    assert scaled == set(of_kind(applied, "Deployment"))
    for name, workload in workloads.items():
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["path"], f"{name} has no {probe}"
        assert budgets.count(workload["spec"]["selector"]) == 1, f"{name}: one PDB"
    for name, deployment in of_kind(applied, "Deployment").items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        port = container["readinessProbe"]["httpGet"]["port"]
        assert ports.get(port, port) == PROBED_PORT, name
