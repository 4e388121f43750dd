"""compose.yaml: valid for docker-compose (v1 checks it offline) and shaped as the deployment needs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dicom_agent.config import Settings
from tests.conftest import skip_or_fail

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose.yaml"
LONG_RUNNING = {"postgres", "rabbitmq", "scp", "worker-gpu", "worker-cpu", "exporter", "web", "flower", "orthanc"}
NODE_ROLES = {"migrate", "scp", "worker-gpu", "worker-cpu", "exporter", "web"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_docker_compose_accepts_the_file() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        skip_or_fail("docker-compose not installed (scripts/setup.sh --peers)")
    assert binary is not None
    res = subprocess.run([binary, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_every_service_the_deployment_needs_is_there_with_a_health_check(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert LONG_RUNNING | {"migrate"} <= set(services)
    for name in LONG_RUNNING:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no health check"
    assert services["migrate"]["command"] == ["db", "upgrade"] and services["migrate"]["restart"] == "no"
    for name in NODE_ROLES - {"migrate"}:
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name


def test_gpu_worker_reserves_an_nvidia_device_and_pins_it(compose: dict[str, Any]) -> None:
    gpu = compose["services"]["worker-gpu"]
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["command"][:5] == ["worker", "--queues", "gpu", "--device", "cuda:0"]
    assert compose["services"]["worker-cpu"]["command"][:5] == ["worker", "--queues", "cpu,export", "--device", "cpu"]


def test_orthanc_is_wired_both_ways(compose: dict[str, Any]) -> None:
    env = compose["services"]["scp"]["environment"]
    orthanc = compose["services"]["orthanc"]["environment"]
    pacs = f"{orthanc['ORTHANC__DICOM_AET']}@orthanc:{orthanc['ORTHANC__DICOM_PORT']}"
    assert env["DICOM_AGENT_DESTINATIONS"] == pacs
    modalities = yaml.safe_load(orthanc["ORTHANC__DICOM_MODALITIES"])
    assert modalities["dicom_agent"] == [env["DICOM_AGENT_AE_TITLE"], "scp", 11112]


def test_node_environment_uses_only_known_settings(compose: dict[str, Any]) -> None:
    known = {f"DICOM_AGENT_{k.upper()}" for k in Settings.model_fields}
    for name in NODE_ROLES:
        env = compose["services"][name]["environment"]
        unknown = {k for k in env if k.startswith("DICOM_AGENT_")} - known
        assert not unknown, f"{name}: unknown settings {unknown}"


@pytest.mark.parametrize("service", sorted(NODE_ROLES))
def test_node_commands_exist_in_the_cli(compose: dict[str, Any], service: str) -> None:
    command = compose["services"][service]["command"]
    res = subprocess.run(
        [sys.executable, "-m", "dicom_agent", command[0], *(command[1:2] if command[0] == "db" else []), "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    for option in (a for a in command if a.startswith("--")):
        assert option in res.stdout, f"{service}: {option} is not an option of '{command[0]}'"
