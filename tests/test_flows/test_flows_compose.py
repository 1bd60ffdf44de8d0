"""docker-compose.yml, deploy/Dockerfile and deploy/prefect.yaml, checked without Docker.

Docker cannot run here, so the stack is checked statically: every command of a service
built from our image is a console script (or ``python -m`` module) of the installed
packages whose sub-command accepts every option used; ports, URLs and variables agree
between services; health checks and dependencies make sense; prefect.yaml validates,
its entry points load and its default parameters pass the flows' models.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
PREFECT_YAML = REPO / "deploy" / "prefect.yaml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"

EXPECTED_SERVICES = {"postgres", "prefect-server", "dask-scheduler", "dask-worker", "minio", "prefect-worker", "register"}
OUR_IMAGE_SERVICES = EXPECTED_SERVICES - {"postgres", "minio"}
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value, env: dict[str, str]):
    """Compose-style ``${VAR}``/``${VAR:-default}`` substitution (``$$`` is a literal $).

    A variable that is neither in *env* nor has a default is an error: the stack must
    start with no .env file at all.
    """
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        assert default is not None, f"variable {name} has no default"
        return default

    return _VAR.sub(sub, value)


@pytest.fixture(scope="module")
def compose() -> dict:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), {})


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _command(service: dict) -> list[str]:
    cmd = service["command"]
    assert isinstance(cmd, list), "exec form only: no shell in between, signals reach the process"
    return [str(c) for c in cmd]


def _option(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_services_and_images(services):
    assert set(services) == EXPECTED_SERVICES
    for name in OUR_IMAGE_SERVICES:
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile", name
        assert (REPO / services[name]["build"]["context"] / services[name]["build"]["dockerfile"]).is_file()
        assert services[name]["image"] == "cmsvd:latest"


def _help_command(cmd: list[str]) -> list[str]:
    """The command cut before its first option/positional argument value, plus --help."""
    if cmd[0] == "python":
        return [sys.executable, *cmd[1:3], cmd[3], "--help"]
    words = [cmd[0]]
    for word in cmd[1:]:
        if word.startswith("-") or ":" in word or "/" in word:
            break
        words.append(word)
    return [str(Path(sys.executable).with_name(words[0])), *words[1:], "--help"]


def test_commands_are_real_entry_points(services):
    scripts = {ep.name for ep in importlib.metadata.entry_points(group="console_scripts")}
    helps = {}
    for name in sorted(OUR_IMAGE_SERVICES):
        cmd = _command(services[name])
        if cmd[0] == "python":
            assert cmd[1] == "-m" and importlib.util.find_spec(cmd[2]) is not None, cmd
        else:
            assert cmd[0] in scripts, f"{name}: {cmd[0]} is not an installed console script"
        helps[name] = subprocess.Popen(_help_command(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for name, proc in helps.items():
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{name}: {' '.join(proc.args)} failed:\n{out}"
        for option in (w for w in _command(services[name]) if w.startswith("--")):
            known = re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", out)
            assert known, f"{name}: option {option} unknown to {' '.join(proc.args)}"


def test_ports_urls_and_variables_agree(services):
    server, sched, worker = services["prefect-server"], services["dask-scheduler"], services["dask-worker"]
    pworker, register, minio, pg = services["prefect-worker"], services["register"], services["minio"], services["postgres"]

    api_port = int(_option(_command(server), "--port"))
    assert f"{api_port}:{api_port}" in [p.split(":", 1)[1] if p.count(":") == 2 else p for p in server["ports"]] or any(
        p.endswith(f":{api_port}") for p in server["ports"]
    )
    for svc in (pworker, register):
        api = urlparse(_env(svc)["PREFECT_API_URL"])
        assert (api.hostname, api.port, api.path) == ("prefect-server", api_port, "/api")

    db = urlparse(_env(server)["PREFECT_API_DATABASE_CONNECTION_URL"])
    pg_env = _env(pg)
    assert db.scheme == "postgresql+asyncpg" and (db.hostname, db.port) == ("postgres", 5432)
    assert (db.username, db.password, db.path.lstrip("/")) == (
        pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"], pg_env["POSTGRES_DB"]
    )

    sched_cmd = _command(sched)
    sched_port = int(_option(sched_cmd, "--port"))
    dash_port = _port(_option(sched_cmd, "--dashboard-address"))
    assert (sched_port, dash_port) == (8786, 8787)
    assert any(p.endswith(f":{dash_port}") for p in sched["ports"])
    scheduler_url = f"tcp://dask-scheduler:{sched_port}"
    assert _command(worker)[2] == scheduler_url
    assert _env(pworker)["CMSVD_DASK_SCHEDULER"] == scheduler_url

    minio_cmd = _command(minio)
    s3_port = _port(_option(minio_cmd, "--address"))
    assert any(p.endswith(f":{s3_port}") for p in minio["ports"])
    minio_env = _env(minio)
    for svc in (worker, pworker, register):  # every process that touches the store
        env = _env(svc)
        endpoint = urlparse(env["CMSVD_S3_ENDPOINT"])
        assert (endpoint.hostname, endpoint.port) == ("minio", s3_port)
        assert env["AWS_ACCESS_KEY_ID"] == minio_env["MINIO_ROOT_USER"]
        assert env["AWS_SECRET_ACCESS_KEY"] == minio_env["MINIO_ROOT_PASSWORD"]
        assert env["CMSVD_STORE_URL"].startswith("s3://")
    assert _env(pworker)["CMSVD_STORE_URL"] == _env(register)["CMSVD_STORE_URL"] == _env(worker)["CMSVD_STORE_URL"]

    # the worker polls the pool the deployments are registered on
    assert _option(_command(pworker), "--pool") == _env(register)["CMSVD_WORK_POOL"]
    assert int(services["dask-worker"]["deploy"]["replicas"]) >= 1


def _healthcheck_port(test: list[str]) -> int | None:
    m = re.search(r"http://localhost:(\d+)/", " ".join(test))
    return int(m.group(1)) if m else None


def test_healthchecks_and_dependencies(services, compose):
    for name, svc in services.items():
        if name == "register":
            assert svc.get("restart") == "no" and "healthcheck" not in svc
            continue
        test = svc["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL")
        if test[:3] == ["CMD", "python", "-c"]:
            compile(test[3], f"{name} healthcheck", "exec")
    ports = {
        "prefect-server": int(_option(_command(services["prefect-server"]), "--port")),
        "dask-scheduler": _port(_option(_command(services["dask-scheduler"]), "--dashboard-address")),
        "dask-worker": _port(_option(_command(services["dask-worker"]), "--dashboard-address")),
        "prefect-worker": int(_env(services["prefect-worker"])["PREFECT_WORKER_WEBSERVER_PORT"]),
    }
    for name, port in ports.items():
        assert _healthcheck_port(services[name]["healthcheck"]["test"]) == port, name
    assert "--with-healthcheck" in _command(services["prefect-worker"])

    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health, which has no check"
            else:
                assert cond["condition"] == "service_completed_successfully" and dep == "register"
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for volume in svc.get("volumes") or []:
            source = volume.split(":", 1)[0]
            assert source in declared, f"{name}: volume {source} is not declared"


def test_dockerfile_copies_existing_paths():
    text = DOCKERFILE.read_text()
    sources = [word for line in text.splitlines() if line.startswith("COPY ") for word in line.split()[1:-1]]
    assert {"pyproject.toml", "pipeline", "storage", "flows", "deploy"} <= set(sources)
    for src in sources:
        # README.md is required by pyproject's `readme`, which the image install needs too
        assert (REPO / src).exists() or src == "README.md", src
    assert re.search(r"^USER (?!root)", text, re.M), "services should not run as root"
    ignore = (REPO / "deploy" / "Dockerfile.dockerignore").read_text().split()
    assert "**" in ignore and all(f"!{s}" in ignore or f"!{s}/**" in ignore for s in sources)


def test_prefect_yaml_validates_and_matches_the_flows(services):
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate

    from flows.deployments import DEFAULT_ENV

    raw = yaml.safe_load(PREFECT_YAML.read_text())
    model = PrefectYamlModel.model_validate(raw)  # prefect deploy silently skips an invalid file
    assert raw["pull"] == [], "no pull step: the code is installed with the package"
    names = {d.name for d in model.deployments}
    assert {"nightly", "on-demand", "compress", "report", "ingest", "demo-data"} <= names

    placeholders = set(re.findall(r"\{\{\s*\$([A-Z_]+)\s*\}\}", yaml.safe_dump(raw)))  # comments excluded
    assert placeholders <= set(DEFAULT_ENV), placeholders - set(DEFAULT_ENV)
    register_env = _env(services["register"])
    assert placeholders - {"CMSVD_STORE_URL"} <= set(register_env), "the compose registrar sets every placeholder"

    env = {f"{{{{ ${k} }}}}": v for k, v in DEFAULT_ENV.items()}

    def fill(value):
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return env.get(value, value) if isinstance(value, str) else value

    for dep in model.deployments:
        flow = load_flow_from_entrypoint(dep.entrypoint)
        assert dep.enforce_parameter_schema is True, dep.name
        assert dep.work_pool.name == "{{ $CMSVD_WORK_POOL }}"
        if dep.parameters:  # defaults must be valid values of the flow's model
            schema = parameter_schema(flow).model_dump_for_openapi()
            validate(fill(dep.parameters), schema, raise_on_error=True, ignore_required=True)
            flow.validate_parameters(fill(dep.parameters))

    nightly = next(d for d in model.deployments if d.name == "nightly")
    assert nightly.schedules and nightly.schedules[0].cron == "{{ $CMSVD_NIGHTLY_CRON }}"
    from prefect.client.schemas.schedules import CronSchedule

    CronSchedule(cron=DEFAULT_ENV["CMSVD_NIGHTLY_CRON"], timezone=DEFAULT_ENV["CMSVD_TIMEZONE"])


def test_env_example_documents_every_variable():
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE.read_text()))
    example = REPO / "deploy" / "stack.env.example"
    documented = {line.split("=", 1)[0] for line in example.read_text().splitlines() if line and not line.startswith("#")}
    assert used == documented, (used - documented, documented - used)
    env = dict(line.split("=", 1) for line in example.read_text().splitlines() if line and not line.startswith("#"))
    services = interpolate(yaml.safe_load(COMPOSE.read_text()), env)["services"]
    assert _option(_command(services["prefect-worker"]), "--pool") == _env(services["register"])["CMSVD_WORK_POOL"]
