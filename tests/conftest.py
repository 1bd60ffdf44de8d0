"""Fixtures and settings shared by the whole suite.

- Prefect's settings are those of every entry point (``flows._prefect_env``): set here,
  before any test imports Prefect, which reads them once.
- ``dask_cluster`` (session): one ``distributed.LocalCluster`` of 2 worker processes with
  1 thread each on 127.0.0.1, no dashboard, shared by every test that needs a cluster and
  does not need one of its own (tests that kill workers, or compare one worker with two,
  start their own and say why).  ``dask_address`` is its scheduler address.
- Temporary folders: on a machine with a roomy tmpfs at ``/dev/shm``, ``tmp_path`` lives
  there (``PYTEST_DEBUG_TEMPROOT``, unless already set), see :func:`_temproot_on_tmpfs`.
- The ``slow`` marker (registered in pyproject.toml): subprocess, Prefect-server, S3 and
  stack tests, and the worker-killing distributed tests.  Every test that uses one of
  :data:`SLOW_FIXTURES` (a server or a process of its own) is marked here; the others are
  marked in their modules.  ``pytest -m "not slow"`` is the fast loop; the README's test
  command and CI run everything.
"""

import os

import pytest

from flows._prefect_env import configure_prefect_env

# Keep BLAS single-threaded in tests: the suite runs beside Dask workers on 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# The temporary Prefect API of in-process flows (the CLI tests) starts slowly on a loaded
# machine: the same timeout as ``cmsvd`` and ``python -m flows``.
configure_prefect_env()

#: Free space a tmpfs needs before the suite's temporary folders go there: pytest keeps the
#: last 3 sessions' folders, each some tens of MiB of stores.
TMPFS_MIN_FREE = 1 << 30


def _temproot_on_tmpfs(path: str = "/dev/shm") -> None:
    """Root pytest's temporary folders on a tmpfs when one with room is writable.

    Why: the suite writes and removes thousands of small files (Zarr chunks, manifests).
    On a disk mounted with ``discard`` each unlink costs about a millisecond, so removing an
    old session's folder took ~7 s of the fast loop; in memory it takes none.  A tmpfs
    that is small (Docker's default 64 MiB) or absent leaves pytest's default alone.
    """
    if os.environ.get("PYTEST_DEBUG_TEMPROOT"):
        return
    try:
        st = os.statvfs(path)
    except OSError:
        return
    if st.f_bavail * st.f_frsize >= TMPFS_MIN_FREE and os.access(path, os.W_OK):
        os.environ["PYTEST_DEBUG_TEMPROOT"] = path


_temproot_on_tmpfs()


@pytest.fixture(scope="session")
def dask_cluster():
    """The suite's shared LocalCluster: 2 worker processes, 1 thread each, 127.0.0.1."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def dask_address(dask_cluster) -> str:
    """Scheduler address of :func:`dask_cluster`, for ``--scheduler`` and ``CMSVD_DASK_SCHEDULER``."""
    return dask_cluster.scheduler_address


#: Fixtures that start a server or processes: a test using one is ``slow``.
SLOW_FIXTURES = frozenset({"prefect_server", "prefect_api", "processes", "s3_endpoint", "s3"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
