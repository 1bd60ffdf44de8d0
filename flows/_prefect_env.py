"""Prefect settings shared by every entry point: ``python -m flows``, the ``cmsvd``
command line and the test suite.

Without ``PREFECT_API_URL`` Prefect runs a flow against a temporary local API server that
it starts in a subprocess.  Its start-up timeout defaults to 20 s, which a loaded 2-core
machine exceeds ("Timed out while attempting to connect to ephemeral Prefect API server").
Prefect reads its settings once, when it is imported, so call :func:`configure_prefect_env`
before anything imports ``prefect``.
"""

from __future__ import annotations

import os

__all__ = ["EPHEMERAL_STARTUP_TIMEOUT_S", "configure_prefect_env"]

#: Seconds Prefect waits for its temporary local API server to answer.
EPHEMERAL_STARTUP_TIMEOUT_S = 120


def configure_prefect_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Set the shared Prefect settings in ``environ`` (default ``os.environ``) and return it.

    Values already present win, so a user can still choose another timeout.  Also turns
    off the temporary server's telemetry heartbeat, which only adds noise (and SQLite lock
    errors) to a local run.
    """
    env = os.environ if environ is None else environ
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(EPHEMERAL_STARTUP_TIMEOUT_S))
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return env
