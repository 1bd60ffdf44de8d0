"""The Prefect tasks that compute the stages of one run (one clustering of a collection,
named by its run id) through ``pipeline.distributed.ClusteringRun``.

Each task takes that ClusteringRun as ``run``; ``run.run`` is its run folder
(``storage.Run``).  Every task is a thin wrapper: the stage method is idempotent (it
loads its checkpoint from ``runs/<collection>/<run_id>/<stage>`` when complete), so a
Prefect retry or a whole new flow run with the same run id resumes after the last
completed stage.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, NamedTuple

from prefect import task

from pipeline.params import ClusteringParams

from ._common import TASK_OPTIONS, StageProgress, run_logger, stage_hook

__all__ = [
    "RUN_KEYS",
    "update_parent",
    "UpdatePlan",
    "open_collection",
    "default_run_id",
    "stored_run_params",
    "clustering_run",
    "run_stages",
    "collect_result",
]

#: ClusteringRun keyword arguments recorded in the run's run.json: every field of
#: pipeline.params.ClusteringParams (tol and batch_bytes are not flow parameters and keep
#: the defaults unless a stored run says otherwise).
RUN_KEYS = tuple(f.name for f in dataclasses.fields(ClusteringParams))


def _logger() -> logging.Logger | logging.LoggerAdapter:
    return run_logger()


@task(name="open-collection", **TASK_OPTIONS)
def open_collection(store_url: str, name: str) -> Any:
    """Open a published collection (``storage.open_collection``)."""
    import storage

    return storage.open_collection(store_url, name)


def default_run_id(collection: Any, run_kwargs: dict[str, Any]) -> str:
    """A run id determined by the collection contents and the parameters, normalised
    (:meth:`pipeline.params.ClusteringParams.run_id`: defaults filled in, so equal
    clusterings get one id whichever keywords were spelt out).

    Starting the same clustering again (same collection, same values) therefore lands
    in the same run folder and resumes it, while a changed collection (an append) or
    other parameters get a fresh run.
    """
    return ClusteringParams(**run_kwargs).run_id(collection.fingerprint())


def stored_run_params(collection: Any, run_id: str) -> dict[str, Any]:
    """ClusteringRun keyword arguments recorded in an existing run's ``run.json``.

    Raises
    ------
    FileNotFoundError
        No such run.
    """
    import storage

    try:
        record = storage.read_run_record(collection, run_id)
    except storage.RunNotFoundError as exc:
        raise storage.RunNotFoundError(f"{exc}; start it with the cmsvd-cluster flow") from None
    return {k: record["params"][k] for k in RUN_KEYS if k in record.get("params", {})}


class UpdatePlan(NamedTuple):
    """What an incremental request finds (:func:`update_parent`): the run to update
    (``parent``), or a finished run of the collection as it is now (``current``: reuse
    it), or neither (a full run); ``reason`` says which, in words."""

    parent: str | None
    current: str | None
    reason: str


def update_parent(collection: Any, run_kwargs: dict[str, Any]) -> UpdatePlan:
    """The latest finished (compressed) distributed run of ``collection`` with these
    parameters: the parent of an update when the collection grew since it, else the run
    to reuse."""
    import storage

    for entry in reversed(storage.list_runs(collection)):
        if not entry["compressed"] or entry["mode"] != "distributed":
            continue
        params = storage.read_run_record(collection, entry["run_id"]).get("params", {})
        if any(params.get(k) != v for k, v in run_kwargs.items() if k in RUN_KEYS):
            continue
        if entry["current"]:
            return UpdatePlan(None, entry["run_id"],
                              f"run {entry['run_id']} is of the collection as it is now (nothing was appended since)")
        return UpdatePlan(entry["run_id"], None, f"the collection grew since run {entry['run_id']}")
    return UpdatePlan(None, None, "no finished run with these parameters to update")


def clustering_run(collection: Any, run_kwargs: dict[str, Any], run_id: str | None, client: Any, progress: Any,
                   parent_run_id: str | None = None) -> Any:
    """The pipeline's run (opening or creating its folder): an UpdateRun of
    ``parent_run_id`` when given (the default run id then derives from the parent), or of
    the parent an existing run's record names (an update reopened by its id alone), else
    a ClusteringRun with ``run_kwargs``. ``progress`` is the ``(stage, done, total)``
    callback."""
    import storage

    if parent_run_id is None and run_id is not None:
        try:
            parent_run_id = storage.read_run_record(collection, run_id).get("params", {}).get("parent_run")
        except storage.RunNotFoundError:  # a new run
            pass
    if parent_run_id is not None:
        from pipeline.distributed.update import UpdateRun

        return UpdateRun(collection, parent_run_id=parent_run_id, client=client, run_id=run_id, progress=progress)
    from pipeline.distributed import ClusteringRun

    return ClusteringRun(collection, **run_kwargs, client=client, run_id=run_id, progress=progress)


def _stage(run: Any, stage: str, method: Callable[[], Any]) -> tuple[Any, float]:
    """Run one stage method between the test hooks; log whether it resumed."""
    resumed = run.run.is_complete(stage)
    stage_hook(stage)
    start = time.perf_counter()
    out = method()
    seconds = time.perf_counter() - start
    _logger().info("%s %s in %.2f s", stage, "loaded from its checkpoint" if resumed else "computed", seconds)
    return out, seconds


@task(name="scan", **TASK_OPTIONS)
def scan(run: Any) -> dict:
    """Map over column batches: exact norms and small factors of every block."""
    return _stage(run, "scan", run.scan)[0]["meta"]


@task(name="partition", **TASK_OPTIONS)
def partition(run: Any) -> dict:
    """Route blocks to anchor subspaces, pack shards."""
    return _stage(run, "partition", run.partition)[0]["meta"]


@task(name="local", **TASK_OPTIONS)
def local(run: Any) -> dict:
    """Sequential greedy inside every shard, in parallel."""
    return _stage(run, "local", run.local)[0]["meta"]


@task(name="merge-round", task_run_name="merge-{index:03d}", **TASK_OPTIONS)
def merge_round(run: Any, index: int) -> bool:
    """One merge round; False when nothing merged (later rounds would not either)."""
    return bool(_stage(run, f"merge-{index:03d}", lambda: run.merge_round(index))[0])


@task(name="certify", **TASK_OPTIONS)
def certify(run: Any) -> dict:
    """Exact error of every group from the stored data."""
    return _stage(run, "certify", run.certify)[0]["meta"]


@task(name="compress", **TASK_OPTIONS)
def compress(run: Any) -> dict:
    """Write the compressed artifact (label = run id)."""
    return _stage(run, "compress", run.compress)[0]["meta"]


@task(name="absorb", **TASK_OPTIONS)
def absorb(run: Any) -> dict:
    """Incremental run: offer the new blocks to the parent run's groups."""
    return _stage(run, "absorb", run.absorb)[0]["meta"]


@task(name="collect-result", **TASK_OPTIONS)
def collect_result(run: Any) -> Any:
    """Assemble the DistributedResult from the checkpoints (computes nothing new)."""
    return run.result()


def run_stages(run: Any, progress: StageProgress) -> None:
    """scan -> partition -> local -> merge rounds -> certify -> compress, as tasks (an
    incremental run: absorb -> local -> merge rounds -> certify -> compress)."""
    from pipeline.distributed import MAX_MERGE_ROUNDS

    first = (("absorb", absorb),) if hasattr(run, "absorb") else (("scan", scan), ("partition", partition))
    for name, stage in first + (("local", local),):
        stage(run)
        progress.done(name)
    # certify would run any missing rounds itself (up to MAX_MERGE_ROUNDS); running
    # them here first makes every round a visible, retried, checkpointed task.
    for index in range(MAX_MERGE_ROUNDS):
        changed = merge_round(run, index)
        progress.done("merge", merge_round=index)
        if not changed:
            break
    progress.done("merge")
    certify(run)
    progress.done("certify")
    compress(run)
    progress.done("compress")
