"""docker-compose.yml and the Dockerfile, validated without a Docker engine (none on these machines).

``docker compose config`` (or Debian's ``docker-compose config``) is the real parser and interpolator; the
structural checks say what the stack promises: pinned images, health checks, provisioning from the repo, demo
data by default, no default Grafana password, ports on localhost only, a non-root exporter image.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"


def compose_command() -> list[str] | None:
    """`docker compose` if the plugin works, else Debian's `docker-compose`, else None."""
    if shutil.which("docker"):
        r = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if r.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


COMPOSE_CMD = compose_command()
needs_compose = pytest.mark.skipif(
    COMPOSE_CMD is None,
    reason="neither the docker compose plugin nor docker-compose is installed (apt-get install docker-compose)")


def run_config(env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("GRAFANA_ADMIN_PASSWORD", "ACTIVITY_EXPORTER_COMMAND")}
    env.update(env_extra)
    return subprocess.run([*COMPOSE_CMD, "-f", str(COMPOSE), "config"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


@needs_compose
def test_compose_config_is_valid():
    r = run_config({"GRAFANA_ADMIN_PASSWORD": "s3cret-for-test"})
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    assert set(cfg["services"]) == {"exporter", "prometheus", "grafana"}
    assert cfg["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "s3cret-for-test"
    command = cfg["services"]["exporter"]["command"]
    command = command if isinstance(command, str) else " ".join(command)
    assert "--demo" in command


@needs_compose
def test_compose_refuses_to_start_without_grafana_password():
    r = run_config({})
    assert r.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in r.stderr


@needs_compose
def test_real_data_command_override():
    cmd = "serve --activity-db /cwa/cwa.db --calibre-library /calibre --listen :9712 --state /data/state.json"
    r = run_config({"GRAFANA_ADMIN_PASSWORD": "x", "ACTIVITY_EXPORTER_COMMAND": cmd})
    assert r.returncode == 0, r.stderr
    got = yaml.safe_load(r.stdout)["services"]["exporter"]["command"]
    assert (got if isinstance(got, str) else " ".join(got)) == cmd


# --------------------------------------------------------------------------- structure (always runs)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_services_and_volumes(compose):
    services = compose["services"]
    assert set(services) == {"exporter", "prometheus", "grafana"}
    assert set(compose["volumes"]) == {"exporter-data", "prometheus-data", "grafana-data"}
    for name, svc in services.items():
        for v in svc.get("volumes", []):
            src = v.split(":", 1)[0]
            if src.startswith("."):
                assert (ROOT / src).exists(), f"{name} mounts missing path {src}"
            else:
                assert src in compose["volumes"], f"{name}: undeclared volume {src}"


def test_images_pinned(compose):
    for name in ("prometheus", "grafana"):
        image = compose["services"][name]["image"]
        repo, _, tag = image.partition(":")
        assert repo in ("prom/prometheus", "grafana/grafana"), image
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{image} is not pinned to a version"
    assert compose["services"]["exporter"]["build"]["context"] == "."


def test_every_service_has_a_healthcheck(compose):
    for name, svc in compose["services"].items():
        hc = svc.get("healthcheck")
        assert hc and hc["test"][0] in ("CMD", "CMD-SHELL"), name
    assert "/healthz" in " ".join(compose["services"]["exporter"]["healthcheck"]["test"])
    assert compose["services"]["prometheus"]["depends_on"]["exporter"]["condition"] == "service_healthy"
    assert compose["services"]["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_provisioned_from_repo(compose):
    prom = compose["services"]["prometheus"]
    assert "./prometheus:/etc/prometheus:ro" in prom["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    scrape = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "activity-exporter")
    assert job["static_configs"][0]["targets"] == ["exporter:9712"]


def test_grafana_password_from_environment(compose):
    env = compose["services"]["grafana"]["environment"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?.+\}", env["GF_SECURITY_ADMIN_PASSWORD"])


def test_ports_bound_to_localhost(compose):
    for name, svc in compose["services"].items():
        for p in svc.get("ports", []):
            assert p.startswith("127.0.0.1:"), f"{name} publishes {p} on all interfaces"


def test_dockerfile():
    text = DOCKERFILE.read_text()
    instr = [line.split(None, 1) for line in re.sub(r"\\\n", " ", text).splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    ops = [i[0].upper() for i in instr]
    args = {op: [a for o, a in instr if o.upper() == op] for op in set(ops)}
    assert args["FROM"] == ["python:3.12-slim"]
    assert any('pip install ".[postgres]"' in a for a in args["RUN"])
    assert "EXPOSE" in ops and args["EXPOSE"] == ["9712"]
    assert ops.index("USER") > max(i for i, o in enumerate(ops) if o == "RUN"), "RUN after USER runs as root"
    assert args["USER"][0] not in ("root", "0")
    assert "/healthz" in args["HEALTHCHECK"][0]
    assert "serve" in args["CMD"][0] and "--demo" in args["CMD"][0]
    assert args["ENTRYPOINT"] == ['["activity-exporter"]']


def test_dockerfile_copies_exist_and_are_not_ignored():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src
                assert src not in ignored, f"{src} is copied but excluded by .dockerignore"
