"""The Dockerfile and .dockerignore, checked without a Docker engine.

What can be run is run for real: the image's HEALTHCHECK command and the compose healthcheck
against a live server (and against a dead port), the Dockerfile's torch-pin extraction against
pyproject.toml, the image's CMD with the image's environment. The rest is read from the files:
a non-root numeric USER, the listening addresses, and a build context (computed with Docker's
.dockerignore rules) that holds everything the Dockerfile copies and none of .venv, caches,
node_modules or tests.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from rnnserve.server.settings import ServerSettings

HEALTHY_TIMEOUT = 20


def instructions(deploy: Any) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of the Dockerfile, continuation lines joined."""
    text = (deploy.ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", text)  # line continuations (and comments in them)
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def final_stage(deploy: Any) -> list[tuple[str, str]]:
    steps = instructions(deploy)
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for keyword, rest in stage:
        if keyword == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def healthcheck_command(deploy: Any) -> list[str]:
    [rest] = [rest for keyword, rest in final_stage(deploy) if keyword == "HEALTHCHECK"]
    exec_form = rest[rest.index("CMD ") + 4:]
    return json.loads(exec_form)


def test_final_stage_runs_as_a_numeric_non_root_user(deploy: Any) -> None:
    users = [rest for keyword, rest in final_stage(deploy) if keyword == "USER"]
    assert users, "the image must not run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert not gid or (gid.isdigit() and int(gid) != 0), users[-1]


def test_image_environment_listens_on_all_interfaces(deploy: Any) -> None:
    env = env_of(final_stage(deploy))
    fields = {f"RNNSERVE_{name.upper()}" for name in ServerSettings.model_fields}
    rnnserve_env = {k: v for k, v in env.items() if k.startswith("RNNSERVE_")}
    assert set(rnnserve_env) <= fields, set(rnnserve_env) - fields
    assert env["RNNSERVE_HOST"] == "0.0.0.0" and env["RNNSERVE_METRICS_HOST"] == "0.0.0.0"
    exposed = {int(p) for keyword, rest in final_stage(deploy) if keyword == "EXPOSE"
               for p in rest.split()}
    assert exposed == {int(env["RNNSERVE_PORT"]), int(env["RNNSERVE_METRICS_PORT"])}


def test_cmd_is_rnnserve_serve_and_reads_the_image_environment(
        deploy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The image's CMD, with the image's ENV, gives the settings a container needs."""
    from rnnserve.server.main import parse_settings

    [cmd] = [json.loads(rest) for keyword, rest in final_stage(deploy) if keyword == "CMD"]
    assert cmd == ["rnnserve", "serve"]
    for key in [k for k in os.environ if k.startswith("RNNSERVE_")]:
        monkeypatch.delenv(key)
    for key, value in env_of(final_stage(deploy)).items():
        if key.startswith("RNNSERVE_"):
            monkeypatch.setenv(key, value)
    settings = parse_settings(cmd[2:])
    assert (settings.host, settings.port) == ("0.0.0.0", 50051)
    assert (settings.metrics_host, settings.metrics_port) == ("0.0.0.0", 8000)
    assert settings.model_repository == Path("/models")
    script = Path(sys.executable).parent / cmd[0]
    result = deploy.run([str(script), *cmd[1:], "--help"], timeout=60)
    assert result.returncode == 0, deploy.output(result)


def test_torch_pin_is_read_from_pyproject(deploy: Any) -> None:
    """The Dockerfile's sed extracts exactly the torch pin of pyproject.toml."""
    dockerfile = (deploy.ROOT / "Dockerfile").read_text()
    [script] = re.findall(r"sed -n '([^']+)' pyproject.toml", dockerfile)
    result = deploy.run(["sed", "-n", script, "pyproject.toml"])
    assert result.returncode == 0, deploy.output(result)
    project = tomllib.loads((deploy.ROOT / "pyproject.toml").read_text())["project"]
    pins = [d for d in project["dependencies"] if re.match(r"torch\s*==", d)]
    assert result.stdout.split() == pins and len(pins) == 1


def test_cuda_variant_is_a_build_argument(deploy: Any) -> None:
    args = [rest for keyword, rest in instructions(deploy) if keyword == "ARG"]
    assert "TORCH_VARIANT=cpu" in args
    dockerfile = (deploy.ROOT / "Dockerfile").read_text()
    assert re.search(r"^\s*cuda\)", dockerfile, re.MULTILINE), "TORCH_VARIANT=cuda is handled"


# --- .dockerignore ------------------------------------------------------------------------------


def dockerignore_rules(deploy: Any) -> list[tuple[bool, re.Pattern[str]]]:
    """(exclude?, regex) per .dockerignore line, in Docker's semantics (last match wins;
    ``*`` within a path segment, ``**`` across segments, a match on a parent covers children)."""
    rules = []
    for line in (deploy.ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i:end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((exclude, re.compile(regex)))
    return rules


def excluder(deploy: Any) -> Any:
    """``excluded(path)``: whether Docker leaves a repository-relative path out of the context."""
    rules = dockerignore_rules(deploy)

    def excluded(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        verdict = False
        for exclude, regex in rules:
            if any(regex.fullmatch(prefix) for prefix in prefixes):
                verdict = exclude
        return verdict

    return excluded


def build_context(deploy: Any) -> set[str]:
    excluded = excluder(deploy)
    skipped = (".git", ".venv", "node_modules")  # big: only whether they are left out matters
    context = {name + "/" for name in skipped if not excluded(name)}
    for dirpath, dirnames, filenames in os.walk(deploy.ROOT):
        rel_dir = Path(dirpath).relative_to(deploy.ROOT).as_posix()
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d not in skipped]
        for name in filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if not excluded(rel):
                context.add(rel)
    return context


def test_build_context_has_what_the_dockerfile_copies(deploy: Any) -> None:
    context = build_context(deploy)
    for keyword, rest in instructions(deploy):
        if keyword != "COPY" or "--from=" in rest:
            continue
        *sources, _destination = [a for a in rest.split() if not a.startswith("--")]
        for source in sources:
            source = source.rstrip("/")
            assert (deploy.ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert source in context or any(p.startswith(source + "/") for p in context), (
                f"COPY {source}: left out of the build context by .dockerignore")
    shipped = {p for p in context if p.startswith("model_repository/")}
    on_disk = {p.relative_to(deploy.ROOT).as_posix()
               for p in (deploy.ROOT / "model_repository").rglob("*") if p.is_file()}
    assert shipped == on_disk


def test_build_context_leaves_out_environments_caches_and_tests(deploy: Any) -> None:
    context = build_context(deploy)
    for path in context:
        top = path.split("/")[0]
        assert top not in {".git", ".venv", "node_modules", "tests", ".pytest_cache",
                           ".ruff_cache", ".hypothesis", "build", "dist", "bench"}, path
        assert "__pycache__" not in path.split("/") and not path.endswith(".pyc"), path
        assert ".egg-info" not in path, path


@pytest.mark.parametrize("path", [
    ".venv/bin/python", "node_modules/.bin/buf", ".git/HEAD", "tests/conftest.py",
    "server/__pycache__/app.cpython-311.pyc", "models/training/__pycache__/cli.cpython-311.pyc",
    "client/x.pyc", ".pytest_cache/v/cache", "proto/.ruff_cache/x", ".hypothesis/examples/1",
    "rnnserve.egg-info/PKG-INFO", "build/lib/x.py", "dist/rnnserve.whl", "bench/results/r.json",
    "runs/1/log", ".coverage", "docs/deploy.md", "deploy/prometheus/rules.yml",
])
def test_dockerignore_leaves_out(deploy: Any, path: str) -> None:
    assert excluder(deploy)(path)


# --- the healthcheck, run for real ---------------------------------------------------------------


def run_healthcheck(command: list[str], port: int, deploy: Any) -> Any:
    """Run an image/compose healthcheck (exec form) here, with this venv's python."""
    assert command[0] == "python"
    env = {**os.environ, "RNNSERVE_PORT": str(port)}
    return deploy.run([sys.executable, *command[1:]], env=env, timeout=HEALTHY_TIMEOUT)


def test_image_healthcheck_passes_on_a_serving_server(live_server: Any, deploy: Any) -> None:
    result = run_healthcheck(healthcheck_command(deploy), live_server.server.port, deploy)
    assert result.returncode == 0, deploy.output(result)


def test_image_healthcheck_fails_without_a_server(deploy: Any) -> None:
    import socket

    with socket.socket() as sock:  # a port that refuses connections
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        result = run_healthcheck(healthcheck_command(deploy), port, deploy)
    assert result.returncode != 0, deploy.output(result)


def test_compose_healthcheck_is_the_image_healthcheck(deploy: Any, live_server: Any) -> None:
    compose = deploy.load_yaml((deploy.ROOT / "docker-compose.yml").read_text())
    test = compose["services"]["rnnserve"]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1:] == healthcheck_command(deploy)
    result = run_healthcheck(test[1:], live_server.server.port, deploy)
    assert result.returncode == 0, deploy.output(result)


# --- build arguments for other bases and package sources ----------------------------------------


def test_base_image_and_package_sources_are_build_arguments(deploy: Any) -> None:
    """Both stages start from BASE_IMAGE (public python slim by default); the package indexes
    and extra CA certificates are arguments with the public defaults (make e2e overrides them)."""
    steps = instructions(deploy)
    args = {rest.partition("=")[0]: rest.partition("=")[2] for keyword, rest in steps
            if keyword == "ARG"}
    assert args["BASE_IMAGE"] == "python:${PYTHON_VERSION}-slim-bookworm"
    assert args["PIP_INDEX_URL"] == "https://pypi.org/simple"
    for name in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_TRUSTED_HOST", "TORCH_INDEX_URL",
                 "EXTRA_CA_CERTS"):
        assert args[name] == '""', name
    froms = [rest for keyword, rest in steps if keyword == "FROM"]
    assert froms == ["${BASE_IMAGE} AS build", "${BASE_IMAGE} AS runtime"]
    run_lines = " ".join(rest for keyword, rest in steps if keyword == "RUN")
    assert "python3 -m venv" in run_lines, "Debian bases have python3, not python"


def test_pip_sources_become_the_build_stages_pip_conf(deploy: Any, tmp_path: Path) -> None:
    """The RUN that writes /etc/pip.conf, run here with its paths redirected: empty arguments
    are left out, the others are written, and extra CA certificates are installed."""
    [script] = [rest for keyword, rest in instructions(deploy)
                if keyword == "RUN" and "> /etc/pip.conf" in rest]
    script = (script.replace("/usr/local/share/ca-certificates", str(tmp_path))
              .replace("/etc/pip.conf", str(tmp_path / "pip.conf"))
              .replace("update-ca-certificates", "true")
              .replace("python3 -m venv /opt/venv", "true"))
    env = {"PATH": os.environ["PATH"], "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
           "PIP_EXTRA_INDEX_URL": "", "PIP_FIND_LINKS": "http://127.0.0.1:9/wheels",
           "PIP_TRUSTED_HOST": "", "EXTRA_CA_CERTS": "-----BEGIN CERTIFICATE-----\nAA==\n"}
    result = deploy.run(["sh", "-c", script], env=env)
    assert result.returncode == 0, deploy.output(result)
    assert (tmp_path / "pip.conf").read_text().splitlines() == [
        "[global]", "cert = /etc/ssl/certs/ca-certificates.crt",
        "index-url = http://127.0.0.1:9/simple", "find-links = http://127.0.0.1:9/wheels"]
    assert (tmp_path / "build-extra-ca.crt").read_text().startswith("-----BEGIN CERTIFICATE-----")
    env["EXTRA_CA_CERTS"] = ""
    (tmp_path / "build-extra-ca.crt").unlink()
    assert deploy.run(["sh", "-c", script], env=env).returncode == 0
    assert not (tmp_path / "build-extra-ca.crt").exists()
