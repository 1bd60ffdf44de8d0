"""The Dask client a flow run works with.

Resolution order for the scheduler address: an explicit address (only the CLI's
``--scheduler`` passes one: flows never take it from a run's parameters, so a dashboard
user cannot send a worker to a scheduler of their choosing), then the
``CMSVD_DASK_SCHEDULER`` environment variable (set on the Prefect worker of the
docker-compose stack), then ``DASK_SCHEDULER_ADDRESS`` (Dask's own convention), else
a :class:`distributed.LocalCluster` bound to 127.0.0.1 that lives as long as the
context manager.  A client to an external scheduler is closed at the end; the
external cluster is left running.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

__all__ = [
    "SCHEDULER_ENV_VARS",
    "resolve_scheduler_address",
    "dask_client",
    "local_cluster_options",
]

#: Environment variables consulted, in order, when no address is given.
SCHEDULER_ENV_VARS = ("CMSVD_DASK_SCHEDULER", "DASK_SCHEDULER_ADDRESS")

def _log() -> logging.Logger | logging.LoggerAdapter:
    from ._common import run_logger

    return run_logger()


def resolve_scheduler_address(address: str | None = None) -> str | None:
    """Scheduler address from the argument or the environment, or None for a LocalCluster.

    Parameters
    ----------
    address : str, optional
        Explicit address (``tcp://host:8786``); blank strings count as absent, because
        the dashboard form submits empty fields as ``""``.
    """
    if address and address.strip():
        return address.strip()
    for name in SCHEDULER_ENV_VARS:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def local_cluster_options() -> dict:
    """Keyword arguments for the fallback LocalCluster.

    Workers are processes (the numerics hold the GIL in places) with one thread each;
    ``CMSVD_LOCAL_WORKERS`` overrides their number (default: CPU count, at most 4).
    Everything binds to 127.0.0.1 and the dashboard takes a free port, so several runs
    on one machine never collide.
    """
    default = min(4, os.cpu_count() or 1)
    n_workers = int(os.environ.get("CMSVD_LOCAL_WORKERS", default))
    return {
        "n_workers": max(1, n_workers),
        "threads_per_worker": 1,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": "127.0.0.1:0",
    }


@contextlib.contextmanager
def dask_client(address: str | None = None, *, timeout: float = 30.0) -> Iterator["distributed.Client"]:  # noqa: F821
    """Yield a connected :class:`distributed.Client`, cleaning up on exit.

    Parameters
    ----------
    address : str, optional
        See :func:`resolve_scheduler_address`.
    timeout : float
        Seconds to wait for the scheduler to answer.
    """
    from distributed import Client, LocalCluster

    resolved = resolve_scheduler_address(address)
    if resolved is not None:
        _log().info("Using the Dask scheduler at %s", resolved)
        client = Client(resolved, timeout=timeout)
        try:
            yield client
        finally:
            client.close()
        return
    _log().info("No Dask scheduler configured: starting a LocalCluster on 127.0.0.1")
    with LocalCluster(**local_cluster_options()) as cluster, Client(cluster, timeout=timeout) as client:
        _log().info("LocalCluster dashboard: %s", client.dashboard_link)
        yield client
