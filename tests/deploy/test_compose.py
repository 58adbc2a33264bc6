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
                     "RNNSERVE_IMAGE_TAG", "LB_PORT", "PROMETHEUS_PORT", "GRAFANA_PORT",
                     "REDIS_IMAGE", "NGINX_IMAGE", "PROMETHEUS_IMAGE", "GRAFANA_IMAGE")


@pytest.fixture(scope="module")
def compose(deploy: Any) -> Any:
    """Run ``docker-compose -f <files> config`` and return the resolved model."""
    binary = deploy.find_tool("docker-compose")
    clean = {k: v for k, v in os.environ.items()
             if k not in COMPOSE_VARIABLES and not k.startswith(("RNNSERVE_", "COMPOSE_"))}

    def config(*files: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        args = [binary, "--project-directory", str(deploy.ROOT)]
        for name in files:
            args += ["-f", str(deploy.ROOT / name)]
        result = deploy.run(args + ["config"], env={**clean, **(env or {})})
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
    assert set(base["services"]) == {"redis", "rnnserve", "lb", "prometheus", "grafana"}
    for name, service in base["services"].items():
        assert service.get("restart") == "unless-stopped", name


def test_only_the_load_balancer_and_dashboards_are_published_on_loopback(
        base: dict[str, Any]) -> None:
    """Replicas have no host ports (they scale); clients reach them through `lb` only."""
    services = base["services"]
    assert published(services["rnnserve"]) == {} and published(services["redis"]) == {}
    assert published(services["lb"]) == {50051: "127.0.0.1:50051"}
    assert published(services["prometheus"]) == {9090: "127.0.0.1:9090"}
    assert published(services["grafana"]) == {3000: "127.0.0.1:3000"}
    assert {int(p) for p in services["rnnserve"]["expose"]} == {50051, 8000}


def test_two_replicas_share_the_redis_session_store(base: dict[str, Any]) -> None:
    rnnserve = base["services"]["rnnserve"]
    assert rnnserve["scale"] == 2
    settings = ServerSettings(session_store=rnnserve["environment"]["RNNSERVE_SESSION_STORE"])
    assert settings.session_store == "redis://redis:6379/0"
    assert "redis" in rnnserve["depends_on"]
    redis = base["services"]["redis"]
    assert redis["command"][0] == "redis-server"
    assert "6379" not in str(redis.get("ports", "")), "Redis stays inside the compose network"


def test_load_balancer_runs_the_repository_nginx_config(base: dict[str, Any], deploy: Any) -> None:
    """`lb` mounts deploy/nginx/nginx.conf whole; it proxies gRPC to the service name."""
    lb = base["services"]["lb"]
    mounts = {v["target"]: v for v in lb["volumes"] if isinstance(v, dict)}
    assert mounts["/etc/nginx/nginx.conf"]["source"] == str(deploy.ROOT / "deploy/nginx/nginx.conf")
    assert mounts["/etc/nginx/nginx.conf"]["read_only"] is True
    assert lb["command"] == ["nginx", "-g", "daemon off;"]
    assert "rnnserve" in lb["depends_on"]
    config = (deploy.ROOT / "deploy/nginx/nginx.conf").read_text()
    assert "server rnnserve:50051" in config and "grpc_pass grpc://rnnserve;" in config
    assert "listen 50051 http2;" in config


def test_image_names_can_be_replaced_for_offline_machines(compose: Any) -> None:
    """make e2e swaps the public images for local stand-ins through these variables."""
    names = {"REDIS_IMAGE": "redis", "NGINX_IMAGE": "lb", "PROMETHEUS_IMAGE": "prometheus",
             "GRAFANA_IMAGE": "grafana"}
    resolved = compose("docker-compose.yml", env={k: f"local/{k.lower()}:x" for k in names})
    for variable, service in names.items():
        assert resolved["services"][service]["image"] == f"local/{variable.lower()}:x"
    ports = compose("docker-compose.yml", env={"LB_PORT": "41000"})
    assert published(ports["services"]["lb"]) == {50051: "127.0.0.1:41000"}


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
    # Every replica, found by DNS: one A record per replica of the service.
    assert "static_configs" not in job
    assert job["dns_sd_configs"] == [
        {"names": ["rnnserve"], "type": "A", "port": int(metrics_port), "refresh_interval": "15s"}]


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
