"""The deployment files agree with the code: compose, Prometheus, Grafana, Kubernetes, Docker.

Nothing here runs a container; each test reads a file and checks it against what the workers
actually accept (the CLI parser, the settings model, the metric names, the topic names).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from workers.cli import build_parser
from workers.names import STAGES, Topics
from workers.observability.metrics import METRIC_NAMES
from workers.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[3]
OPS = REPO / "ops"
K8S = OPS / "k8s"
METRICS_PORT = 9400
WORKER_DOCKERFILE = "ops/docker/Dockerfile"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_all_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def duration_s(value: str) -> float:
    """Compose and Prometheus durations such as `30s`, `1m30s`, `500ms`."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"not a duration: {value!r}")
    return sum(float(n) * units[u] for n, u in parts)


def settings_from_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, Any]) -> Settings:
    """Parse settings as a worker would, from exactly `env` (and no config file)."""
    with monkeypatch.context() as m:
        for name in ("KAFKA_BOOTSTRAP", "REDIS_URL"):
            m.delenv(name, raising=False)
        for name in [n for n in os.environ if n.startswith("CONVEYOR_")]:
            m.delenv(name)
        m.setenv("CONVEYOR_CONFIG", "")  # no config file
        for name, value in env.items():
            m.setenv(name, str(value))
        return load_settings()


# ---------------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    compose = load_yaml(REPO / "compose.yaml")
    assert isinstance(compose.get("services"), dict), "compose.yaml has no services"
    found: dict[str, Any] = compose["services"]
    return found


def worker_services(services: dict[str, Any]) -> dict[str, Any]:
    found = {
        name: svc
        for name, svc in services.items()
        if isinstance(svc.get("build"), dict)
        and svc["build"].get("dockerfile") == WORKER_DOCKERFILE
    }
    assert found, "no service builds the worker image"
    return found


def test_compose_has_the_whole_stack(services: dict[str, Any]) -> None:
    expected = {"kafka", "redis", "preprocess", "inference", "postprocess", "prometheus", "grafana"}
    assert expected <= services.keys()
    for name, svc in services.items():
        assert svc.get("image") or svc.get("build"), f"{name} has neither image nor build"


@pytest.mark.parametrize("name", ["kafka", "redis", "prometheus", "grafana"])
def test_infrastructure_has_healthchecks(services: dict[str, Any], name: str) -> None:
    assert services[name]["healthcheck"]["test"], f"{name} has an empty healthcheck"


def test_depends_on_waits_for_healthy_services(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        for dependency, spec in (svc.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            assert spec["condition"] == "service_healthy", f"{name} -> {dependency}: {spec}"
            assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
    for name in worker_services(services):
        assert {"kafka", "redis"} <= set(services[name]["depends_on"]), name
    assert "prometheus" in services["grafana"]["depends_on"]


def test_worker_commands_are_real_subcommands(services: dict[str, Any]) -> None:
    parser, handlers = build_parser()
    stages = set()
    for name, svc in worker_services(services).items():
        args = parser.parse_args(svc["command"])
        assert args.command == "worker", f"{name} runs {svc['command']}"
        assert args.command in handlers
        stages.add(args.stage)
    assert stages == set(STAGES)


def test_workers_serve_health_and_metrics_inside_the_network(services: dict[str, Any]) -> None:
    for name, svc in worker_services(services).items():
        assert "ports" not in svc, f"{name} publishes host ports (and could not --scale)"
        assert str(METRICS_PORT) in [str(p) for p in svc["expose"]], name
        check = " ".join(svc["healthcheck"]["test"])
        assert f"127.0.0.1:{METRICS_PORT}/readyz" in check, f"{name}: {check}"
        assert "curl" not in check, f"{name}: the image has no curl"


def test_worker_environment_is_valid_settings(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, svc in worker_services(services).items():
        settings = settings_from_env(monkeypatch, svc["environment"])
        assert settings.observability.metrics_port == METRICS_PORT, name
        assert settings.kafka.bootstrap == "kafka:9092", name
        grace_s = duration_s(svc["stop_grace_period"])
        assert grace_s > settings.worker.shutdown_grace_s, f"{name}: stop_grace_period too short"


def requests_gpu(svc: dict[str, Any]) -> bool:
    reservations = svc.get("deploy", {}).get("resources", {}).get("reservations", {})
    return any("gpu" in d.get("capabilities", []) for d in reservations.get("devices", []))


def test_gpu_reservation_only_under_gpu_profile(services: dict[str, Any]) -> None:
    gpu = {name for name, svc in services.items() if requests_gpu(svc)}
    assert gpu == {"inference-gpu"}
    assert services["inference-gpu"]["profiles"] == ["gpu"]
    assert services["inference-gpu"]["build"]["args"]["EXTRAS"] == "[gpu]"
    assert services["inference-gpu"]["build"]["args"]["MODEL_PRECISION"] == "fp16"  # CUDA: fp16
    for name, svc in services.items():
        if "gpu" in svc.get("profiles", []):
            assert requests_gpu(svc), f"{name} is in the gpu profile without a GPU"


def test_gpu_worker_environment_is_valid_settings(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_from_env(monkeypatch, services["inference-gpu"]["environment"])
    assert settings.runtime.providers[0] == "CUDAExecutionProvider"
    assert settings.redis.url == "redis://redis:6379/0"


# ------------------------------------------------------------------------- prometheus


def test_prometheus_discovers_every_worker_service(services: dict[str, Any]) -> None:
    config = load_yaml(OPS / "prometheus" / "prometheus.yml")
    discovered: set[str] = set()
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            assert sd["type"] == "A", job["job_name"]
            assert sd["port"] == METRICS_PORT, job["job_name"]
            assert job.get("metrics_path", "/metrics") == "/metrics"
            discovered.update(sd["names"])
    assert discovered == set(worker_services(services))
    mounts = services["prometheus"]["volumes"]
    assert any(v.startswith("./ops/prometheus/prometheus.yml:") for v in mounts)


# ---------------------------------------------------------------------------- grafana


@pytest.fixture(scope="module")
def datasource_uid() -> str:
    provisioning = load_yaml(OPS / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    (datasource,) = provisioning["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    uid: str = datasource["uid"]
    return uid


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    found: dict[str, Any] = json.loads(
        (OPS / "grafana" / "dashboards" / "conveyor.json").read_text()
    )
    return found


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def metric_families(expr: str) -> set[str]:
    names = set(re.findall(r"\bconveyor_[a-z0-9_]+", expr))
    families = set()
    for name in names:
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name.removesuffix(suffix) in METRIC_NAMES:
                name = name.removesuffix(suffix)
        families.add(name)
    return families


def test_dashboard_is_a_provisionable_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"]
    assert dashboard["title"]
    ids = [p["id"] for p in all_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in all_panels(dashboard["panels"]):
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys(), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]


def test_dashboard_queries_name_only_exported_metrics(
    dashboard: dict[str, Any], datasource_uid: str
) -> None:
    queried: set[str] = set()
    for panel in all_panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == datasource_uid, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"])["uid"] == datasource_uid
            families = metric_families(target["expr"])
            assert families, f"{panel['title']}: {target['expr']} names no conveyor metric"
            unknown = families - set(METRIC_NAMES)
            assert not unknown, f"{panel['title']} queries unknown metrics {unknown}"
            queried |= families
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"]["uid"] == datasource_uid, variable["name"]
        assert metric_families(variable["query"]["query"]) <= set(METRIC_NAMES)
    assert queried == set(METRIC_NAMES), f"metrics without a panel: {set(METRIC_NAMES) - queried}"


def test_grafana_provisioning_matches_compose_mounts(services: dict[str, Any]) -> None:
    provider = load_yaml(OPS / "grafana" / "provisioning" / "dashboards" / "conveyor.yml")
    (entry,) = provider["providers"]
    grafana = services["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert mounts[entry["options"]["path"]] == "./ops/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./ops/grafana/provisioning"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


# ------------------------------------------------------------------------- kubernetes


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    kustomization = load_yaml(K8S / "base" / "kustomization.yaml")
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in (K8S / "base").glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk, "base/kustomization.yaml and the files beside it differ"
    return [doc for name in sorted(listed) for doc in load_all_yaml(K8S / "base" / name)]


def of_kind(manifests: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


@pytest.fixture(scope="module")
def config_env(manifests: list[dict[str, Any]]) -> dict[str, str]:
    (config_map,) = of_kind(manifests, "ConfigMap").values()
    data: dict[str, str] = config_map["data"]
    return data


def test_every_manifest_parses() -> None:
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in load_all_yaml(path):
            assert {"apiVersion", "kind"} <= doc.keys(), path


def test_config_map_is_valid_settings(
    config_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_from_env(monkeypatch, config_env)
    assert settings.observability.metrics_port == METRICS_PORT


def worker_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    found: dict[str, Any] = container
    return found


def stage_of(deployment: dict[str, Any]) -> str:
    parser, _ = build_parser()
    args = parser.parse_args(worker_container(deployment)["args"])
    assert args.command == "worker"
    stage: str = args.stage
    return stage


def test_a_deployment_per_stage(manifests: list[dict[str, Any]]) -> None:
    stages = [stage_of(d) for d in of_kind(manifests, "Deployment").values()]
    assert sorted(stages) == sorted(STAGES)


def probe_port(container: dict[str, Any], probe: dict[str, Any]) -> int:
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    return int(named[port])


def test_deployments_probe_health_and_outlast_shutdown_grace(
    manifests: list[dict[str, Any]], config_env: dict[str, str]
) -> None:
    grace_s = float(config_env.get("CONVEYOR_WORKER__SHUTDOWN_GRACE_S", 20))
    (config_name,) = of_kind(manifests, "ConfigMap")
    for name, deployment in of_kind(manifests, "Deployment").items():
        pod = deployment["spec"]["template"]
        container = worker_container(deployment)
        for kind, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
            assert container[kind]["httpGet"]["path"] == path, f"{name} {kind}"
            assert probe_port(container, container[kind]) == METRICS_PORT, f"{name} {kind}"
        assert pod["spec"]["terminationGracePeriodSeconds"] > grace_s, name
        assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true", name
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(METRICS_PORT), name
        assert {"configMapRef": {"name": config_name}} in container["envFrom"], name
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True, name
        assert "replicas" not in deployment["spec"], f"{name}: KEDA owns the replica count"
        assert "nvidia.com/gpu" not in container["resources"].get("limits", {}), name


def test_a_disruption_budget_per_deployment(manifests: list[dict[str, Any]]) -> None:
    budgets = [
        pdb["spec"]["selector"] for pdb in of_kind(manifests, "PodDisruptionBudget").values()
    ]
    for name, deployment in of_kind(manifests, "Deployment").items():
        selector = deployment["spec"]["selector"]
        assert budgets.count(selector) == 1, f"{name} needs exactly one PodDisruptionBudget"
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector["matchLabels"].items() <= labels.items(), name


def test_scaled_objects_follow_each_stage_consumer_group(
    manifests: list[dict[str, Any]], config_env: dict[str, str]
) -> None:
    deployments = of_kind(manifests, "Deployment")
    topics = Topics(config_env.get("CONVEYOR_KAFKA__TOPIC_PREFIX", "conveyor"))
    partitions = int(config_env["CONVEYOR_KAFKA__PARTITIONS"])
    scaled = of_kind(manifests, "ScaledObject")
    assert sorted(so["spec"]["scaleTargetRef"]["name"] for so in scaled.values()) == sorted(
        deployments
    )
    for name, so in scaled.items():
        stage = stage_of(deployments[so["spec"]["scaleTargetRef"]["name"]])
        (trigger,) = so["spec"]["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka", name
        assert meta["consumerGroup"] == topics.group_of(stage), name
        # A stage reading one topic per lane is scaled on the lag of all of them (no topic).
        inputs = topics.inputs_of(stage)
        assert meta.get("topic") == (inputs[0] if len(inputs) == 1 else None), name
        assert meta["bootstrapServersFromEnv"] in config_env, name
        assert int(meta["lagThreshold"]) > 0, name
        assert 1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"] <= partitions


def test_gpu_overlay_puts_inference_on_a_gpu() -> None:
    overlay = load_yaml(K8S / "gpu" / "kustomization.yaml")
    assert overlay["resources"] == ["../base"]
    (patch_ref,) = overlay["patches"]
    assert patch_ref["target"]["name"] == "conveyor-inference"
    (patch,) = load_all_yaml(K8S / "gpu" / patch_ref["path"])
    assert patch["kind"] == "Deployment"
    assert patch["metadata"]["name"] == "conveyor-inference"
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "worker"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


@pytest.mark.parametrize("overlay", ["", "gpu"])
def test_kustomize_builds(overlay: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    built = subprocess.run(
        [kubectl, "kustomize", str(K8S / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    docs = [d for d in yaml.safe_load_all(built.stdout) if d is not None]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    limits = worker_container(deployments["conveyor-inference"])["resources"]["limits"]
    assert ("nvidia.com/gpu" in limits) == (overlay == "gpu")
    assert all(d["metadata"]["namespace"] == "conveyor" for d in docs if d["kind"] != "Namespace")


# ----------------------------------------------------------------------------- docker


@pytest.fixture(scope="module")
def dockerfile() -> list[str]:
    text = (OPS / "docker" / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)  # continuation lines become one instruction
    return [line.strip() for line in joined.splitlines() if line.strip() and line[0] != "#"]


def instructions(dockerfile: list[str], keyword: str) -> list[str]:
    return [line for line in dockerfile if line.split()[0].upper() == keyword]


def test_dockerfile_is_multi_stage_and_non_root(dockerfile: list[str]) -> None:
    stages = instructions(dockerfile, "FROM")
    assert len(stages) >= 2, stages
    assert all(" AS " in line.upper() for line in stages), stages
    assert any("--from=build" in line for line in instructions(dockerfile, "COPY"))
    user = instructions(dockerfile, "USER")[-1].split()[1].split(":")[0]
    assert user not in ("root", "0"), user
    assert any(line.startswith("ARG EXTRAS") for line in dockerfile)


def test_dockerfile_serves_and_checks_health(dockerfile: list[str]) -> None:
    assert f"EXPOSE {METRICS_PORT}" in dockerfile
    (healthcheck,) = instructions(dockerfile, "HEALTHCHECK")
    assert "/readyz" in healthcheck
    assert "curl" not in healthcheck


def test_dockerfile_fails_when_the_model_cannot_be_built(dockerfile: list[str]) -> None:
    (build,) = [line for line in dockerfile if "conveyor models build text-embedding" in line]
    assert "||" not in build, f"model build failure is masked: {build}"
    assert all("|| true" not in line for line in dockerfile)
