"""The deployment files, validated offline: Docker's engine does not run in CI.

Compose against the Compose Specification's schema, Prometheus config and rules with promtool
(rule unit tests included), the Dockerfiles with hadolint, Grafana provisioning by structure.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# Lives beside the repository, in CI as well as here (see ../shared/schemas/README.md).
COMPOSE_SCHEMA = ROOT / "../shared/schemas/compose-spec.json"
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "deploy/prometheus"
GRAFANA = ROOT / "deploy/grafana"
DOCKERFILES = [ROOT / "Dockerfile", ROOT / "loadtest/Dockerfile"]


def tool(name: str) -> str:
    """A command-line tool from the venv (pip-installed) or the system (apt-installed)."""
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert path, f"{name} not found: run `make install-dev apt-deps`"
    return path


def run(*command, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


# -- docker-compose.yml ---------------------------------------------------------------------------

def test_compose_matches_the_compose_specification():
    assert COMPOSE_SCHEMA.is_file(), f"{COMPOSE_SCHEMA} is missing"
    result = run(tool("check-jsonschema"), "--schemafile", str(COMPOSE_SCHEMA), str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr


def _bind_sources(service: dict) -> list[str]:
    sources = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                sources.append(source)
        elif volume.get("type") == "bind":
            sources.append(volume["source"])
    return sources


def test_every_file_compose_mounts_or_builds_exists(compose):
    checked = 0
    for name, service in compose["services"].items():
        for source in _bind_sources(service):
            assert (ROOT / source).exists(), f"service {name} mounts {source}, which is missing"
            checked += 1
        build = service.get("build")
        if build:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            assert context.is_dir(), f"service {name}: build context {context} is missing"
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile",
                                                                               "Dockerfile")
            assert (context / dockerfile).is_file(), f"service {name}: {dockerfile} is missing"
        for env_file in service.get("env_file", []):
            assert (ROOT / env_file).is_file(), f"service {name}: env_file {env_file} is missing"
    assert checked >= 6


def test_compose_services_are_hardened_and_gpu_is_a_profile(compose):
    services = compose["services"]
    assert {"onnx-serve", "onnx-serve-gpu", "prometheus", "grafana", "locust-master",
            "locust-worker"} <= set(services)
    cpu, gpu = services["onnx-serve"], services["onnx-serve-gpu"]
    assert "profiles" not in cpu and cpu["environment"]["ONNXSERVE_DEVICE"] == "cpu"
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    for service in (cpu, gpu):
        assert service["read_only"] is True
        assert not str(service["user"]).startswith(("0", "root"))
        assert any(entry.startswith("/tmp") for entry in service["tmpfs"])
        assert service["cap_drop"] == ["ALL"]
        assert "onnx-serve" in service["networks"]["default"]["aliases"]
    # Prometheus sees the folder its config refers to its rules from.
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert services["locust-worker"]["deploy"]["replicas"] >= 2
    assert "--master" in services["locust-master"]["command"]


# -- Prometheus -----------------------------------------------------------------------------------

def test_promtool_check_config():
    result = run(tool("promtool"), "check", "config", "prometheus.yml", cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_promtool_check_rules():
    result = run(tool("promtool"), "check", "rules", *map(str, PROMETHEUS.glob("rules/*.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests():
    tests = sorted(PROMETHEUS.glob("tests/*_test.yml"))
    assert tests
    result = run(tool("promtool"), "test", "rules", *map(str, tests), cwd=PROMETHEUS / "tests")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_rules_cover_the_four_conditions():
    groups = yaml.safe_load((PROMETHEUS / "rules/onnx-serve.yml").read_text())["groups"]
    alerts = {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}
    assert {"InferenceLatencySLOBreach", "InferenceErrorRatioHigh", "InferenceQueueNearFull",
            "InferenceModelNotReady"} <= alerts
    tested = (PROMETHEUS / "tests/onnx-serve_test.yml").read_text()
    for alert in alerts:
        assert f"alertname: {alert}" in tested, f"alert {alert} has no promtool unit test"


# -- Grafana --------------------------------------------------------------------------------------

def test_grafana_provisioning_points_at_the_dashboard(compose):
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    source = datasources["datasources"][0]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/onnx-serve.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    mounts = {v.split(":")[1]: v.split(":")[0]
              for v in compose["services"]["grafana"]["volumes"] if v.startswith("./")}
    assert (ROOT / mounts[path] / "onnx-serve.json").is_file()


def test_dashboard_has_the_panels_ops_asked_for():
    dashboard = json.loads((GRAFANA / "dashboards/onnx-serve.json").read_text())
    titles = " | ".join(panel["title"].lower() for panel in dashboard["panels"])
    for words in ("request rate by model and code", "errors", "p50 / p95 / p99",
                  "queue wait vs compute", "batch size distribution", "in-flight",
                  "queue depth", "execution provider"):
        assert words in titles, f"no panel about {words!r}: {titles}"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"


# -- Dockerfiles ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint(dockerfile):
    result = run(tool("hadolint"), "--no-color", str(dockerfile))
    assert result.returncode == 0, result.stdout + result.stderr


def test_service_image_shape():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    assert len(stages) >= 2, "multi-stage build expected"
    assert re.search(r"CUDA_IMAGE=nvidia/cuda:13\.[\d.]+-cudnn-runtime-ubuntu24\.04", text)
    assert "grpc_tools.protoc -Iservice/_proto=protos" in text
    runtime = text[text.rindex("\nFROM "):]
    assert re.search(r"^USER\s+10001", runtime, re.M)
    assert "HEALTHCHECK" in runtime and "grpc_health" in runtime
    assert '["serve", "--models", "/models"]' in runtime
    assert "torch" not in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ignored[ignored.index("*") + 1:] and "!service/" in ignored and "!protos/" in ignored
