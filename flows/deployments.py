"""Register the cmsvd deployments with a Prefect server.

``python -m flows.deployments register`` (the one-shot ``register`` service of the
docker-compose stack, and the integration test) does, idempotently:

1. waits for the Prefect API (``PREFECT_API_URL``) to answer;
2. creates the S3 bucket of ``CMSVD_STORE_URL`` if it is an ``s3://`` URL (MinIO);
3. creates the process work pool ``CMSVD_WORK_POOL`` unless it exists;
4. runs ``prefect --no-prompt deploy --all --prefect-file deploy/prefect.yaml`` with the
   defaults below filled in for unset variables;
5. switches ``enforce_parameter_schema`` back on for any cmsvd deployment where it is off
   (someone unticked it in the deployment's edit form): the server then refuses bad
   parameters when a run is created, unless the run itself asks to skip the check
   (the Run form's "Validate parameters" switch, or ``enforce_parameter_schema: false``
   in the REST call), which Prefect does not let a deployment forbid; the flows then
   refuse them at start (see ``flows.params.validate_params``);
6. with ``--demo`` (or ``CMSVD_SEED_DEMO=1``), writes the synthetic demo collection
   ``CMSVD_DEMO_COLLECTION`` unless it already exists.

``python -m flows.deployments show`` prints the deployments the server knows.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_ENV",
    "PREFECT_YAML",
    "deploy_env",
    "register",
    "ensure_work_pool",
    "ensure_bucket",
    "enforce_parameter_schemas",
    "wait_for_api",
    "main",
]

log = logging.getLogger("flows.deployments")

#: Values of the prefect.yaml placeholders when the environment does not set them.
DEFAULT_ENV = {
    "CMSVD_WORK_POOL": "cmsvd-process",
    "CMSVD_STORE_URL": "s3://cmsvd/store",
    "CMSVD_NIGHTLY_COLLECTION": "demo",
    "CMSVD_NIGHTLY_CRON": "0 2 * * *",
    "CMSVD_TIMEZONE": "UTC",
    "CMSVD_DEMO_COLLECTION": "demo",
}


def _find_prefect_yaml() -> Path:
    """deploy/prefect.yaml next to the package (source tree) or in the image's workdir."""
    candidates = [
        Path(os.environ.get("CMSVD_PREFECT_YAML", "")),
        Path(__file__).resolve().parent.parent / "deploy" / "prefect.yaml",
        Path.cwd() / "deploy" / "prefect.yaml",
    ]
    for path in candidates:
        if path.name and path.is_file():
            return path
    raise FileNotFoundError("deploy/prefect.yaml not found; set CMSVD_PREFECT_YAML")


PREFECT_YAML = _find_prefect_yaml


def deploy_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for ``prefect deploy``: *environ* with the defaults filled in."""
    env = dict(os.environ if environ is None else environ)
    for key, value in DEFAULT_ENV.items():
        if not env.get(key):
            env[key] = value
    return env


def wait_for_api(timeout: float = 120.0) -> str:
    """Block until ``PREFECT_API_URL``/health answers; return the URL."""
    import httpx
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise RuntimeError("PREFECT_API_URL is not set: deployments need a Prefect server")
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url.rstrip('/')}/health", timeout=5).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"Prefect API at {url} did not answer within {timeout:.0f} s")
        time.sleep(1.0)


def ensure_bucket(store_url: str) -> None:
    """Create the bucket of an ``s3://`` store URL if missing (no-op otherwise)."""
    if not store_url.startswith(("s3://", "s3a://")):
        return
    import fsspec

    endpoint = os.environ.get("CMSVD_S3_ENDPOINT")
    options: dict[str, Any] = {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}
    fs, path = fsspec.core.url_to_fs(store_url, **options)
    bucket = path.split("/", 1)[0]
    if not fs.exists(bucket):
        log.info("creating bucket %s", bucket)
        fs.mkdir(bucket)


def ensure_work_pool(name: str) -> None:
    """Create a process work pool with the default job template unless it exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            log.info("work pool %s exists", name)
            return
        except ObjectNotFound:
            pass
        pool = WorkPoolCreate(name=name, type="process", base_job_template=ProcessWorker.get_default_base_job_template())
        try:
            client.create_work_pool(pool)
            log.info("created work pool %s", name)
        except ObjectAlreadyExists:  # another registrar won the race
            pass


def run_prefect_deploy(env: dict[str, str], prefect_yaml: Path | None = None) -> None:
    """``prefect --no-prompt deploy --all --prefect-file ...`` in a subprocess."""
    prefect_yaml = prefect_yaml or PREFECT_YAML()
    prefect = Path(sys.executable).with_name("prefect")
    cmd = [str(prefect) if prefect.exists() else "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_yaml)]
    log.info("running %s", " ".join(cmd))
    subprocess.run(cmd, env=env, cwd=prefect_yaml.parent.parent, check=True)


def enforce_parameter_schemas(flow_prefix: str = "cmsvd-") -> list[str]:
    """Turn ``enforce_parameter_schema`` on for every deployment of the cmsvd flows.

    Parameters
    ----------
    flow_prefix : str
        Deployments of flows whose name starts with this are checked.

    Returns
    -------
    list of str
        ``flow/deployment`` names that had it off (now on).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate

    fixed = []
    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows()}
        for d in client.read_deployments():
            name = f"{flows.get(d.flow_id, '?')}/{d.name}"
            if name.startswith(flow_prefix) and not d.enforce_parameter_schema:
                # only the field that is set is sent (exclude_unset), nothing else changes
                client.update_deployment(d.id, DeploymentUpdate(enforce_parameter_schema=True))
                fixed.append(name)
    for name in fixed:
        log.warning("%s did not enforce its parameter schema: switched it back on", name)
    return fixed


def seed_demo(env: dict[str, str]) -> None:
    """Write the demo collection through the cmsvd-demo-data flow unless it exists."""
    import storage

    url, name = env["CMSVD_STORE_URL"], env["CMSVD_DEMO_COLLECTION"]
    if name in storage.list_collections(url):
        log.info("demo collection %s exists", name)
        return
    from .ingest import demo_data

    demo_data(params={"store_url": url, "collection": name})


def register(demo: bool = False, timeout: float = 120.0) -> None:
    """Everything ``python -m flows.deployments register`` does (see the module doc)."""
    env = deploy_env()
    wait_for_api(timeout)
    ensure_bucket(env["CMSVD_STORE_URL"])
    ensure_work_pool(env["CMSVD_WORK_POOL"])
    run_prefect_deploy(env)
    enforce_parameter_schemas()
    if demo:
        seed_demo(env)


def show() -> None:
    """Print ``flow/deployment  schedule  work pool  schema enforced`` for every deployment."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows()}
        for d in client.read_deployments():
            crons = [getattr(s.schedule, "cron", None) for s in d.schedules]
            print(
                f"{flows.get(d.flow_id, '?')}/{d.name}\tschedules={[c for c in crons if c]}\tpool={d.work_pool_name}"
                f"\tenforce_parameter_schema={d.enforce_parameter_schema}"
            )


def main(argv: list[str] | None = None) -> int:
    """Command line: ``register [--demo] [--timeout S]`` or ``show``."""
    parser = argparse.ArgumentParser(prog="python -m flows.deployments", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("register", help="create bucket and work pool, register the deployments")
    reg.add_argument("--demo", action="store_true", default=os.environ.get("CMSVD_SEED_DEMO") == "1",
                     help="also write the synthetic demo collection")
    reg.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the Prefect API")
    sub.add_parser("show", help="list the registered deployments")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.command == "register":
        register(demo=args.demo, timeout=args.timeout)
    else:
        show()
    return 0


if __name__ == "__main__":
    sys.exit(main())
