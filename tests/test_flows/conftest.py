"""Fixtures for the flow tests: real processes on 127.0.0.1, always cleaned up.

- ``processes``: a :class:`flows_harness.Processes` stopped at teardown (SIGTERM to every
  process group, then SIGKILL to whatever is left, descendants included).
- ``prefect_server`` (session): ``prefect server start`` on a free port with an
  isolated SQLite database and PREFECT_HOME, shared by every flow test (starting a
  server costs ~10 s on two cores).  In-process flows use it through ``prefect_api``
  (``temporary_settings``); subprocesses through ``PREFECT_API_URL``.
"""

from __future__ import annotations

import sys

import httpx
import pytest
from flows_harness import VENV_BIN, Processes, base_env, free_port, wait_until


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real ``prefect server start`` (SQLite) on a free port; yields a dict with
    ``url`` (API), ``ui``, ``env`` (for subprocesses) and ``procs``."""
    root = tmp_path_factory.mktemp("prefect")
    env = base_env(root / "home")
    env["PREFECT_API_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{root / 'prefect.db'}"
    # SQLite serialises writers: on two busy cores the default 10 s statement timeout
    # turns lock waits into 503s
    env["PREFECT_SERVER_DATABASE_TIMEOUT"] = "60"
    port = free_port()
    procs = Processes(root / "logs")
    try:
        proc = procs.start(
            "prefect-server", [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env
        )
        api = f"http://127.0.0.1:{port}/api"
        wait_until(lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, 90, "the Prefect server", proc=proc)
        client_env = dict(env)
        del client_env["PREFECT_API_DATABASE_CONNECTION_URL"]
        client_env["PREFECT_API_URL"] = api
        yield {"url": api, "ui": f"http://127.0.0.1:{port}", "env": client_env, "procs": procs, "root": root}
        _drain_prefect_clients()
    finally:
        procs.stop_all()


def _drain_prefect_clients() -> None:
    """Send in-process flows' pending logs and events while the server still runs;
    otherwise they are retried against a dead server at interpreter exit (a minute)."""
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=10)
        except Exception:  # best effort: the tests are over
            pass


@pytest.fixture
def prefect_api(prefect_server):
    """Point in-process Prefect at the session server for one test."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server["url"], PREFECT_HOME: prefect_server["env"]["PREFECT_HOME"]}):
        yield prefect_server


@pytest.fixture
def processes(tmp_path):
    """A :class:`Processes` whose every process is stopped at teardown."""
    procs = Processes(tmp_path / "logs")
    try:
        yield procs
    finally:
        procs.stop_all()
