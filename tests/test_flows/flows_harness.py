"""Helpers of the flow tests (imported by conftest.py and the test modules; the name is
unique because test folders have no ``__init__.py``).

- :class:`Processes` starts commands in their own sessions (process groups), logs their
  output to files and, at teardown, sends SIGTERM to every group, then SIGKILL to
  whatever is left: nothing a test starts can outlive it.
- :func:`start_moto` starts a moto S3 server under a :class:`Processes`; :func:`api_call`
  is one Prefect API request, retried while the busy server answers 503.
- :func:`make_collection` writes the small synthetic collection the tests cluster;
  :func:`check_certified` recomputes every group's error from the stored data and the
  compressed artifact.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.25, proc=None):
    """Poll *predicate* until truthy (returned), failing after *timeout* seconds or as
    soon as *proc* (a Popen the wait depends on) has exited."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except Exception:  # not up yet
            value = None
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode} first")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Processes:
    """Start processes in their own sessions; stop them all (SIGTERM, then SIGKILL)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")
        proc = subprocess.Popen(
            cmd, env=env, cwd=cwd or self.log_dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()  # the child keeps its own descriptor
        self.procs[name] = proc
        return proc

    def log(self, name: str, tail: int = 4000) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"----- {n} -----\n{self.log(n)}" for n in self.procs)

    @staticmethod
    def kill_group(proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)  # pgid == pid: start_new_session
        except ProcessLookupError:
            pass

    def descendants(self) -> list:
        """Every live descendant of the started processes, even in other sessions
        (a Prefect worker may start flow runs in their own process group)."""
        import psutil

        found = []
        for proc in self.procs.values():
            try:
                found += psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        return found

    def stop_all(self, grace: float = 10.0) -> None:
        import psutil

        stragglers = self.descendants()
        for proc in self.procs.values():
            self.kill_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs.values():
            # children of a finished leader (Dask nannies, flow-run subprocesses) too
            self.kill_group(proc, signal.SIGKILL)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - unkillable
                pass
        for child in stragglers:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(stragglers, timeout=5)


#: Credentials moto accepts (any value does; boto needs some).
MOTO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def start_moto(processes: "Processes", env: dict[str, str]) -> str:
    """Start ``moto_server`` on a free port of 127.0.0.1; return its endpoint URL once it answers."""
    import httpx

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = processes.start("moto", [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], env)
    wait_until(lambda: httpx.get(endpoint, timeout=2).status_code < 500, 60, "the moto S3 server", proc=proc)
    return endpoint


def api_call(method: str, url: str, **kwargs):
    """One Prefect API call, retried while a busy SQLite-backed server answers 503
    ("retry later"), as Prefect's own clients and the dashboard do."""
    import httpx

    for _ in range(20):
        response = httpx.request(method, url, timeout=30, **kwargs)
        if response.status_code != 503:
            return response
        time.sleep(1.0)
    return response


def base_env(prefect_home: Path) -> dict[str, str]:
    """Environment for every process: isolated Prefect home, quiet, one BLAS thread."""
    env = dict(os.environ)
    for key in list(env):
        if key.startswith(("PREFECT_", "CMSVD_", "DASK_SCHEDULER")):
            del env[key]  # nothing from the developer's shell leaks in
    env.update(
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
        DO_NOT_TRACK="1",
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def make_collection(
    url: str, name: str, n_blocks: int = 240, rows: int = 32, width: int = 4, seed: int = 1, blocks_per_subspace: int = 30
):
    """A small union-of-subspaces collection (subspaces of rank 2) in the store."""
    import storage
    from pipeline.synthetic import union_of_subspaces

    layout, _ = union_of_subspaces(n_blocks, rows, width, blocks_per_subspace=blocks_per_subspace, subspace_rank=2, seed=seed)
    return storage.ingest_blocks(url, name, (layout.block(i) for i in range(layout.n_blocks)))


def check_certified(store_url: str, name: str, label: str, eps: float) -> list[float]:
    """Recompute, from the stored data and the stored artifact, every group's relative
    error; assert all are <= eps (plus float tolerance); return them."""
    import storage

    coll = storage.open_collection(store_url, name)
    art = storage.open_artifact(store_url, name, label, verify=True)
    assert sorted(b for g in art.groups for b in g) == list(range(coll.n_blocks))
    errors = []
    for group in art.groups:
        num = sum(float(np.sum((coll.block(i).astype(np.float64) - art.decompress(i).astype(np.float64)) ** 2)) for i in group)
        den = float(sum(coll.norms2[i] for i in group))
        errors.append((num / den) ** 0.5 if den > 0 else 0.0)
    assert max(errors) <= eps * (1 + 1e-9) + 1e-12, max(errors)
    return errors


def run_cluster_flow(prefect_server: dict, dask_address: str, params: dict, flow=None):
    """The cmsvd-cluster flow (or ``flow``) run in this process against the session's
    Prefect server, on the suite's Dask cluster (the worker's ``CMSVD_DASK_SCHEDULER``,
    not a parameter): its final state, asserted completed."""
    import pytest
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    from flows.cluster import cluster

    flow = flow or cluster
    settings = {PREFECT_API_URL: prefect_server["url"], PREFECT_HOME: prefect_server["env"]["PREFECT_HOME"]}
    with pytest.MonkeyPatch.context() as mp, temporary_settings(updates=settings):
        mp.setenv("CMSVD_DASK_SCHEDULER", dask_address)
        state = flow(params=params, return_state=True)
    assert state.is_completed(), state
    return state
