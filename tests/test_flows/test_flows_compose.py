"""docker-compose.yml, deploy/Dockerfile and deploy/prefect.yaml, checked without Docker.

Docker cannot run here, so the stack is checked statically: every command of a service
built from our image is a console script (or ``python -m`` module) of the installed
packages whose sub-command accepts every option used; ports, URLs and variables agree
between services; health checks and dependencies make sense; prefect.yaml validates,
its entry points load and its default parameters pass the flows' models.  Security
defaults: published ports bound to 127.0.0.1, no default secrets, Prefect basic auth,
bucket-scoped worker keys, pinned image tags and Python packages.
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
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*)|(:?\?)([^}]*))?\}")
#: Variables that must come from .env: compose refuses to start without them.
SECRETS = {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "CMSVD_S3_SECRET_KEY", "PREFECT_AUTH_STRING"}
#: What a filled-in .env provides for them in these tests.
TEST_SECRETS = {"POSTGRES_PASSWORD": "pg-secret", "MINIO_ROOT_PASSWORD": "root-secret",
                "CMSVD_S3_SECRET_KEY": "worker-secret", "PREFECT_AUTH_STRING": "admin:prefect-secret"}


class MissingVariable(AssertionError):
    """A ``${VAR:?message}`` variable is unset (compose would refuse to start)."""


def interpolate(value, env: dict[str, str]):
    """Compose-style ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` substitution
    (``$$`` is a literal $).

    A variable that is neither in *env* nor has a default is an error.
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
        name, default, required = m.group(1), m.group(3), m.group(4)
        if name in env and (env[name] or not (m.group(2) or "").startswith(":")):
            return env[name]
        if required:
            raise MissingVariable(f"{name}: {m.group(5)}")
        assert default is not None, f"variable {name} has no default"
        return default

    return _VAR.sub(sub, value)


@pytest.fixture(scope="module")
def compose() -> dict:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), TEST_SECRETS)


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


def _pinned(image: str) -> bool:
    """A tag naming one release: not latest, not a floating major (``16-alpine``)."""
    name, _, tag = image.rpartition(":")
    return bool(name) and tag != "latest" and bool(re.search(r"\d+\.\d+|RELEASE\.\d{4}-", tag))


def test_services_and_images(services):
    assert set(services) == EXPECTED_SERVICES
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    for name in OUR_IMAGE_SERVICES:
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile", name
        assert (REPO / services[name]["build"]["context"] / services[name]["build"]["dockerfile"]).is_file()
        assert services[name]["image"] == f"cmsvd:{version}"
    for name, svc in services.items():
        assert _pinned(svc["image"]), f"{name}: image {svc['image']} is not pinned to a release"


def test_published_ports_bind_to_localhost_by_default(services):
    published = {name: svc["ports"] for name, svc in services.items() if svc.get("ports")}
    assert set(published) == {"prefect-server", "dask-scheduler", "minio"}
    for name, ports in published.items():
        for p in ports:
            assert isinstance(p, str) and p.startswith("127.0.0.1:") and p.count(":") == 2, (name, p)
    exposed = interpolate(yaml.safe_load(COMPOSE.read_text()), {**TEST_SECRETS, "CMSVD_BIND_ADDRESS": "0.0.0.0"})
    for name in published:  # one explicit variable exposes them
        assert all(p.startswith("0.0.0.0:") for p in exposed["services"][name]["ports"])
    assert not any(p.endswith(":8786") for p in published["dask-scheduler"]), "the scheduler has no auth"


def test_secrets_have_no_defaults():
    raw = yaml.safe_load(COMPOSE.read_text())
    with pytest.raises(MissingVariable):
        interpolate(raw, {})
    text = COMPOSE.read_text()
    for name in SECRETS:
        uses = re.findall(rf"\$\{{{name}(:?[-?])?", text)
        assert uses and all(u == ":?" for u in uses), f"{name} must be required (${{{name}:?...}}): {uses}"
    for name in SECRETS:  # each one alone is enough to stop the stack
        with pytest.raises(MissingVariable, match=name):
            interpolate(raw, {k: v for k, v in TEST_SECRETS.items() if k != name})
    example = (REPO / "deploy" / "stack.env.example").read_text()
    values = dict(line.split("=", 1) for line in example.splitlines() if line and not line.startswith("#"))
    for name in SECRETS:
        assert "CHANGE-ME" in values[name], f"{name}: the example must hold a placeholder"
    generator = [line for line in example.splitlines() if line.startswith("#") and "openssl rand" in line]
    assert len(generator) == 1, "one command that generates the secrets"
    for name in SECRETS:
        assert values[name].split(":")[-1] in generator[0], f"the generator command does not fill {name}"


def test_prefect_basic_auth_and_scoped_store_keys(services):
    auth = _env(services["prefect-server"])["PREFECT_SERVER_API_AUTH_STRING"]
    assert auth == TEST_SECRETS["PREFECT_AUTH_STRING"]
    for name in ("prefect-worker", "register"):
        assert _env(services[name])["PREFECT_API_AUTH_STRING"] == auth, name
    root = {_env(services["minio"])["MINIO_ROOT_USER"], _env(services["minio"])["MINIO_ROOT_PASSWORD"]}
    for name, svc in services.items():
        env = _env(svc)
        if name not in ("minio", "register"):
            assert not root & set(env.values()), f"{name} sees a MinIO root key"
        if "AWS_ACCESS_KEY_ID" in env:
            assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("cmsvd-worker", "worker-secret"), name
    register = _env(services["register"])
    assert (register["CMSVD_S3_ACCESS_KEY"], register["CMSVD_S3_SECRET_KEY"]) == ("cmsvd-worker", "worker-secret")
    cmd = _command(services["register"])
    assert cmd[:4] == ["python", "-m", "storage.stack_setup", "--"], "the register service creates the scoped key first"

    from storage.stack_setup import bucket_policy, worker_environment

    policy = bucket_policy("cmsvd")
    resources = {r for st in policy["Statement"] for r in st["Resource"]}
    assert resources == {"arn:aws:s3:::cmsvd", "arn:aws:s3:::cmsvd/*"}
    actions = {a for st in policy["Statement"] for a in st["Action"]}
    assert not any(a.endswith("*") or "Admin" in a or a.startswith("admin:") for a in actions)
    env = worker_environment({**register, "AWS_ACCESS_KEY_ID": "x"})
    assert env["AWS_ACCESS_KEY_ID"] == "cmsvd-worker" and "MINIO_ROOT_PASSWORD" not in env


def _help_command(cmd: list[str]) -> list[str]:
    """The command cut before its first option/positional argument value, plus --help."""
    if cmd[:3] == ["python", "-m", "storage.stack_setup"]:  # a wrapper: check what it runs
        return _help_command(cmd[cmd.index("--") + 1:])
    if cmd[0] == "python":
        return [sys.executable, *cmd[1:3], cmd[3], "--help"]
    words = [cmd[0]]
    for word in cmd[1:]:
        if word.startswith("-") or ":" in word or "/" in word:
            break
        words.append(word)
    return [str(Path(sys.executable).with_name(words[0])), *words[1:], "--help"]


@pytest.mark.slow  # a --help subprocess per service command
def test_commands_are_real_entry_points(services):
    scripts = {ep.name for ep in importlib.metadata.entry_points(group="console_scripts")}
    helps = {}
    for name in sorted(OUR_IMAGE_SERVICES):
        cmd = _command(services[name])
        if cmd[:3] == ["python", "-m", "storage.stack_setup"]:
            assert importlib.util.find_spec("storage.stack_setup") is not None
            cmd = cmd[cmd.index("--") + 1:]
        if cmd[0] == "python":
            assert cmd[1] == "-m" and importlib.util.find_spec(cmd[2]) is not None, cmd
        else:
            assert cmd[0] in scripts, f"{name}: {cmd[0]} is not an installed console script"
        helps[name] = subprocess.Popen(_help_command(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for name, proc in helps.items():
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{name}: {' '.join(proc.args)} failed:\n{out}"
        for option in (w for w in _command(services[name]) if w.startswith("--") and w != "--"):
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
        # the bucket-scoped key, never the root keys (test_prefect_basic_auth_and_scoped_store_keys)
        assert env["AWS_ACCESS_KEY_ID"] != minio_env["MINIO_ROOT_USER"]
        assert env["AWS_SECRET_ACCESS_KEY"] != minio_env["MINIO_ROOT_PASSWORD"]
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

    def allowed(src: str) -> bool:
        parents = [src.split("/")[:i] for i in range(1, src.count("/") + 1)]
        return f"!{src}" in ignore or f"!{src}/**" in ignore or any(f"!{'/'.join(p)}/**" in ignore for p in parents)

    assert "**" in ignore and all(allowed(s) for s in sources), sources


def test_dockerfile_pins_base_image_and_packages():
    text = DOCKERFILE.read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    assert _pinned(base), base
    install = next(line for line in text.splitlines() if "pip install" in line)
    assert "-c deploy/constraints.txt" in install
    extras = set(re.search(r"\.\[([a-z0-9_,-]+)\]", install).group(1).split(","))
    import tomllib

    declared = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    assert extras <= declared, f"extras {extras - declared} do not exist"
    assert {"s3", "formats"} <= extras, "s3fs for MinIO, h5py/safetensors for ingest"
    pins = [line for line in (REPO / "deploy" / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[A-Za-z0-9_.+!\-]+", p) for p in pins), pins[:5]
    pinned = {p.split("==")[0].lower().replace("_", "-") for p in pins}
    assert {"prefect", "dask", "distributed", "zarr", "numpy", "s3fs", "h5py", "safetensors", "minio"} <= pinned


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
