"""The docker-compose topology as local processes on 127.0.0.1, end to end.

prefect-server  -> ``prefect server start`` (SQLite; the session fixture)
dask-scheduler  -> ``dask scheduler`` + 2 x ``dask worker`` (the dask-worker replicas)
register        -> ``python -m flows.deployments register --demo`` (work pool, every
                   deployment of deploy/prefect.yaml, the demo collection)
prefect-worker  -> ``prefect worker start --type process --with-healthcheck`` with
                   CMSVD_DASK_SCHEDULER pointing at the scheduler
minio           -> a local folder as the store (S3 is covered by the storage tests)

Then it does what a user does on the dashboard: a "Run" of the on-demand deployment
through the REST API with the UI's payload (first with an out-of-range eps, which the
server must refuse), watches the run to completion, and checks the certified result in
the store, the run's artifacts and logs, and that the work ran on the Dask scheduler.
Every process is stopped at teardown (``processes`` fixture), and every wait has a
timeout.
"""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from flows_harness import VENV_BIN, api_call, check_certified, free_port, wait_until

POOL = "cmsvd-test-pool"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _start_dask(processes, env, tmp_path) -> str:
    port, dash = free_port(), free_port()
    address = f"tcp://127.0.0.1:{port}"
    sched = processes.start(
        "dask-scheduler",
        [str(VENV_BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", f"127.0.0.1:{dash}"],
        env,
    )
    wait_until(lambda: httpx.get(f"http://127.0.0.1:{dash}/health", timeout=2).status_code == 200, 60, "the Dask scheduler", proc=sched)
    for i in range(2):
        processes.start(
            f"dask-worker-{i}",
            [str(VENV_BIN / "dask"), "worker", address, "--host", "127.0.0.1", "--nworkers", "1", "--nthreads", "1",
             "--memory-limit", "1GiB", "--no-dashboard", "--local-directory", str(tmp_path / f"dask-{i}")],
            env,
        )
    from distributed import Client

    with Client(address, timeout=30) as client:
        client.wait_for_workers(2, timeout=60)
    return address


def _ui_run(api: str, deployment_id: str, parameters: dict) -> httpx.Response:
    """POST exactly what the dashboard's Run dialog posts (DeploymentFlowRunCreate)."""
    body = {
        "state": {"type": "SCHEDULED", "message": "Run from the Prefect UI"},
        "parameters": parameters,
        "enforce_parameter_schema": True,
    }
    return api_call("POST", f"{api}/deployments/{deployment_id}/create_flow_run", json=body)


def _scheduler_task_prefixes(address: str) -> set[str]:
    from distributed import Client

    with Client(address, timeout=30) as client:
        return set(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes)))


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_stack_runs_a_dashboard_started_flow_on_dask(prefect_server, processes, tmp_path):
    api = prefect_server["url"]
    store = str(tmp_path / "store")
    env = dict(prefect_server["env"], CMSVD_STORE_URL=store, CMSVD_WORK_POOL=POOL, CMSVD_DEMO_COLLECTION="demo",
               CMSVD_NIGHTLY_COLLECTION="demo")
    address = _start_dask(processes, env, tmp_path)

    reg = subprocess.run([sys.executable, "-m", "flows.deployments", "register", "--demo", "--timeout", "60"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert reg.returncode == 0, reg.stdout[-3000:] + reg.stderr[-3000:]

    health = free_port()
    # as the compose stack's worker: the store is the only root a run may use
    worker_env = dict(env, CMSVD_DASK_SCHEDULER=address, CMSVD_ALLOWED_ROOTS=store, PREFECT_WORKER_QUERY_SECONDS="1",
                      PREFECT_WORKER_WEBSERVER_HOST="127.0.0.1", PREFECT_WORKER_WEBSERVER_PORT=str(health))
    worker = processes.start(
        "prefect-worker",
        [str(VENV_BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process", "--with-healthcheck"],
        worker_env,
        cwd=tmp_path,
    )
    wait_until(lambda: httpx.get(f"http://127.0.0.1:{health}/health", timeout=2).status_code == 200, 60,
               "the Prefect worker health check", proc=worker)

    # the deployments as the dashboard lists them
    nightly = api_call("GET", f"{api}/deployments/name/cmsvd-cluster/nightly").json()
    assert [s["schedule"].get("cron") for s in nightly["schedules"]] == ["0 2 * * *"]
    assert nightly["work_pool_name"] == POOL
    on_demand = api_call("GET", f"{api}/deployments/name/cmsvd-cluster/on-demand").json()
    defaults = on_demand["parameters"]["params"]
    assert defaults["store_url"] == store and defaults["collection"] == "demo"
    assert httpx.get(prefect_server["ui"], timeout=10).status_code == 200  # the dashboard itself

    bad = _ui_run(api, on_demand["id"], {"params": {**defaults, "eps": 1.5}})
    assert bad.status_code == 409 and "eps" in bad.text, bad.text

    # the scheduler is the worker's: the form has no such field, the server refuses one
    rogue = _ui_run(api, on_demand["id"], {"params": {**defaults, "scheduler_address": "tcp://rogue.example:8786"}})
    assert rogue.status_code == 409 and "scheduler_address" in rogue.text, rogue.text

    params = {**defaults, "eps": 0.05, "rank": 8, "run_id": "dashboard-run"}
    created = _ui_run(api, on_demand["id"], {"params": params})
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]

    def finished():
        state = api_call("GET", f"{api}/flow_runs/{run_id}").json()["state"]
        return state if state["type"] in TERMINAL else None

    state = wait_until(finished, 240, "the flow run to finish", interval=1.0, proc=worker)
    assert state["type"] == "COMPLETED", f"{state}\n{processes.log('prefect-worker', 8000)}"

    # the certified result in the store
    errors = check_certified(store, "demo", "dashboard-run", 0.05)
    assert len(errors) >= 1
    assert (tmp_path / "store" / "runs" / "demo" / "dashboard-run" / "report.json").exists()

    # what the dashboard shows for the run
    arts = api_call("POST", f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}).json()
    by_key = {a["key"]: a for a in arts}
    assert by_key["cmsvd-demo-progress"]["data"] == 100
    assert {"cmsvd-demo-summary", "cmsvd-demo-groups", "cmsvd-demo-report"} <= set(by_key)
    logs = api_call("POST", f"{api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200}).json()
    messages = "\n".join(entry["message"] for entry in logs)
    assert f"Using the Dask scheduler at {address}" in messages
    tasks = api_call("POST", f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [run_id]}}}).json()
    names = {t["name"].rsplit("-", 1)[0] if not t["name"].startswith("merge-") else "merge" for t in tasks}
    assert {"scan", "partition", "local", "merge", "certify", "compress", "report"} <= names

    # and the work ran on the external Dask cluster, not a LocalCluster
    # (the scan tasks carry an explicit key; other task names are pipeline internals)
    prefixes = _scheduler_task_prefixes(address)
    assert "cmsvd-scan" in prefixes and len(prefixes) >= 4, prefixes
