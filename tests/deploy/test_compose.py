"""docker-compose.yml (and the GPU override) as docker-compose itself reads them.

``docker-compose config`` validates the files against the Compose schema, interpolates the
variables and merges the override; the tests then check the resolved model: what is published,
mounted and configured, and that the pieces agree with each other (settings names, the
Prometheus target, the Grafana provisioning paths).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from rnnserve.server.settings import ServerSettings

GPU_OVERRIDE = "docker-compose.gpu.yml"

# A clean interpolation environment: the tests see the committed defaults, not the caller's shell.
COMPOSE_VARIABLES = ("BIND_ADDRESS", "MODEL_REPOSITORY", "GRAFANA_ADMIN_PASSWORD",
                     "RNNSERVE_IMAGE_TAG")


@pytest.fixture(scope="module")
def compose(deploy: Any) -> Any:
    """Run ``docker-compose -f <files> config`` and return the resolved model."""
    binary = deploy.find_tool("docker-compose")
    env = {k: v for k, v in os.environ.items()
           if k not in COMPOSE_VARIABLES and not k.startswith(("RNNSERVE_", "COMPOSE_"))}

    def config(*files: str) -> dict[str, Any]:
        args = [binary, "--project-directory", str(deploy.ROOT)]
        for name in files:
            args += ["-f", str(deploy.ROOT / name)]
        result = deploy.run(args + ["config"], env=env)
        assert result.returncode == 0, deploy.output(result)
        assert "WARNING" not in result.stderr, deploy.output(result)
        return deploy.load_yaml(result.stdout)

    return config


@pytest.fixture(scope="module")
def base(compose: Any) -> dict[str, Any]:
    return compose("docker-compose.yml")


@pytest.fixture(scope="module")
def gpu(compose: Any) -> dict[str, Any]:
    return compose("docker-compose.yml", GPU_OVERRIDE)


def published(service: dict[str, Any]) -> dict[int, str]:
    """container port -> host address:port, from the resolved (long or short) port syntax."""
    ports = {}
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports[int(port["target"])] = f"{port.get('host_ip', '')}:{port['published']}"
        else:
            host, _, target = str(port).removesuffix("/tcp").rpartition(":")
            ports[int(target)] = host
    return ports


def test_services_and_restart_policy(base: dict[str, Any]) -> None:
    assert set(base["services"]) == {"rnnserve", "prometheus", "grafana"}
    for name, service in base["services"].items():
        assert service.get("restart") == "unless-stopped", name


def test_rnnserve_ports_are_published_on_loopback_by_default(base: dict[str, Any]) -> None:
    rnnserve = base["services"]["rnnserve"]
    assert published(rnnserve) == {50051: "127.0.0.1:50051", 8000: "127.0.0.1:8000"}
    assert published(base["services"]["prometheus"]) == {9090: "127.0.0.1:9090"}
    assert published(base["services"]["grafana"]) == {3000: "127.0.0.1:3000"}


def test_rnnserve_environment_names_real_settings(base: dict[str, Any]) -> None:
    """Every RNNSERVE_* variable is a settings field (a typo would be silently ignored)."""
    env = base["services"]["rnnserve"]["environment"]
    fields = {f"RNNSERVE_{name.upper()}": name for name in ServerSettings.model_fields}
    unknown = sorted(set(env) - set(fields))
    assert not unknown, f"not server settings: {unknown}"
    values = {fields[key]: value for key, value in env.items()}
    settings = ServerSettings(**values)  # validates every value
    assert settings.host == "0.0.0.0" and settings.metrics_host == "0.0.0.0"
    assert (settings.port, settings.metrics_port) == (50051, 8000)


def test_model_repository_is_mounted_where_the_server_reads_it(base: dict[str, Any]) -> None:
    rnnserve = base["services"]["rnnserve"]
    repository = rnnserve["environment"]["RNNSERVE_MODEL_REPOSITORY"]
    mounts = {v["target"]: v for v in rnnserve["volumes"]}
    assert repository in mounts
    assert mounts[repository]["type"] == "bind"
    assert mounts[repository]["source"].endswith("/model_repository")
    assert mounts[repository].get("read_only") is True


def test_rnnserve_healthcheck_and_shutdown(base: dict[str, Any]) -> None:
    rnnserve = base["services"]["rnnserve"]
    check = rnnserve["healthcheck"]
    assert check["test"][:3] == ["CMD", "python", "-c"]
    assert "grpc_health.v1" in check["test"][3]
    assert check["retries"] >= 1
    grace = float(rnnserve["environment"]["RNNSERVE_GRACE_PERIOD_S"])
    stop = rnnserve["stop_grace_period"]
    assert stop.endswith("s") and float(stop[:-1]) > grace, "docker must wait out the drain"
    assert rnnserve["build"]["args"]["TORCH_VARIANT"] == "cpu"


def test_prometheus_scrapes_the_rnnserve_service(base: dict[str, Any], deploy: Any) -> None:
    """The committed scrape target is the compose service name and its metrics port."""
    prometheus = base["services"]["prometheus"]
    mounts = {v["target"]: v for v in prometheus["volumes"] if isinstance(v, dict)}
    assert mounts["/etc/prometheus"]["source"] == str(deploy.ROOT / "deploy" / "prometheus")
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = deploy.load_yaml((deploy.ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert config["rule_files"] == ["rules.yml"]
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "rnnserve"]
    metrics_port = base["services"]["rnnserve"]["environment"]["RNNSERVE_METRICS_PORT"]
    assert job["static_configs"] == [{"targets": [f"rnnserve:{metrics_port}"]}]


def test_grafana_is_provisioned_from_the_repository(base: dict[str, Any], deploy: Any) -> None:
    grafana = base["services"]["grafana"]
    mounts = {v["target"]: v["source"] for v in grafana["volumes"] if isinstance(v, dict)
              and v.get("type") == "bind"}
    assert mounts["/etc/grafana/provisioning"] == str(deploy.ROOT / "deploy/grafana/provisioning")
    dashboards_dir = "/var/lib/grafana/dashboards"
    assert mounts[dashboards_dir] == str(deploy.ROOT / "deploy/grafana/dashboards")
    provider = deploy.load_yaml(
        (deploy.ROOT / "deploy/grafana/provisioning/dashboards/rnnserve.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == dashboards_dir
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_dir + "/")
    assert (deploy.ROOT / "deploy/grafana/dashboards" / home.rsplit("/", 1)[1]).is_file()
    datasources = deploy.load_yaml(
        (deploy.ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    [source] = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert grafana["environment"]["GF_SECURITY_ADMIN_USER"] == "admin"


def test_gpu_override_reserves_a_gpu_and_builds_the_cuda_image(
        base: dict[str, Any], gpu: dict[str, Any]) -> None:
    assert "deploy" not in base["services"]["rnnserve"], "the default stack must run without GPU"
    rnnserve = gpu["services"]["rnnserve"]
    [device] = rnnserve["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert rnnserve["build"]["args"]["TORCH_VARIANT"] == "cuda"
    assert rnnserve["image"] != base["services"]["rnnserve"]["image"]
    # everything else is inherited from the base file
    assert rnnserve["environment"] == base["services"]["rnnserve"]["environment"]
    assert rnnserve["volumes"] == base["services"]["rnnserve"]["volumes"]
