"""Pieces shared by the flows: task options, artifact keys, the stage progress bar,
test hooks.  Nothing here computes anything about matrices."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from prefect.cache_policies import NO_CACHE

__all__ = [
    "TASK_OPTIONS",
    "run_logger",
    "artifact_key",
    "is_transient",
    "StageProgress",
    "STAGE_WEIGHTS",
    "stage_hook",
    "HOLD_AT_ENV",
    "HOLD_FILE_ENV",
    "run_folder_url",
    "read_json",
    "write_bytes",
]

# Errors that a retry cannot fix: bad input, bad parameters, corrupt checkpoints, a
# run id reused with other parameters.  Everything else (network, S3, a Dask worker
# lost, a scheduler restart) is worth another attempt, and every stage is idempotent.
_PERMANENT = (ValueError, TypeError, KeyError, IndexError, FileNotFoundError, NotImplementedError)


def is_transient(exc: BaseException | None) -> bool:
    """True when a failed stage should be retried (see ``_PERMANENT``)."""
    if exc is None:
        return True
    try:  # storage errors are all permanent except plain I/O trouble
        from storage.errors import StorageError

        if isinstance(exc, StorageError):
            return False
    except ImportError:  # pragma: no cover - storage is part of the package
        pass
    return not isinstance(exc, _PERMANENT)


def _retry_condition(task: Any, task_run: Any, state: Any) -> bool:
    data = getattr(state, "data", None)
    return is_transient(data if isinstance(data, BaseException) else None)


#: Options of every stage task.  Caching is off: stage outputs are checkpointed in the
#: store by ``pipeline``/``storage``, which is what makes re-runs resume, and Prefect's
#: input hashing would choke on Dask clients anyway.
TASK_OPTIONS: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": [2, 10],
    "retry_condition_fn": _retry_condition,
    "cache_policy": NO_CACHE,
}


def run_logger() -> Any:
    """Prefect's run logger (its lines reach the dashboard), or a plain logger outside a run."""
    import logging

    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except Exception:  # no active flow or task run: a plain function call
        return logging.getLogger("flows")


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes only)."""
    text = "-".join(p for p in parts if p)
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", text.lower())).strip("-")[:200]


#: Share of the progress bar per stage.  Merge rounds split their share in halves
#: (1/2, 1/4, ...) because their number is unknown in advance.
STAGE_WEIGHTS = {
    "scan": 10.0,
    "partition": 5.0,
    "local": 30.0,
    "merge": 30.0,
    "certify": 10.0,
    "compress": 10.0,
    "report": 5.0,
}


class StageProgress:
    """A Prefect progress artifact advanced per stage (and within stages).

    Parameters
    ----------
    key : str
        Artifact key (shows the artifact on the dashboard's Artifacts page too).
    stages : sequence of str
        The stage families this flow runs, in order (keys of :data:`STAGE_WEIGHTS`).
    min_interval : float
        Seconds between two within-stage updates, so that a chatty progress callback
        does not flood the API.
    """

    def __init__(self, key: str, stages: list[str], description: str = "", min_interval: float = 1.0) -> None:
        from prefect.artifacts import create_progress_artifact

        total = sum(STAGE_WEIGHTS[s] for s in stages)
        self._start: dict[str, float] = {}
        acc = 0.0
        for s in stages:
            self._start[s] = 100.0 * acc / total
            acc += STAGE_WEIGHTS[s]
        self._width = {s: 100.0 * STAGE_WEIGHTS[s] / total for s in stages}
        self._min_interval = min_interval
        self._last_update = 0.0
        self.value = 0.0
        self.artifact_id = create_progress_artifact(0.0, key=key, description=description)

    def _set(self, value: float, force: bool = False) -> None:
        from prefect.artifacts import update_progress_artifact

        value = float(min(100.0, max(self.value, value)))  # never moves backwards
        now = time.monotonic()
        if value == self.value or (not force and now - self._last_update < self._min_interval):
            return
        self.value = value
        self._last_update = now
        update_progress_artifact(self.artifact_id, value)

    @staticmethod
    def family(stage: str) -> str:
        """``merge-003`` -> ``merge``."""
        return stage.split("-", 1)[0]

    def done(self, stage: str, merge_round: int | None = None) -> None:
        """Mark a stage (or merge round *merge_round*) complete."""
        fam = self.family(stage)
        if fam not in self._start:
            return
        fraction = 1.0 if merge_round is None else 1.0 - 0.5 ** (merge_round + 1)
        self._set(self._start[fam] + fraction * self._width[fam], force=True)

    def within(self, stage: str, done: int, total: int) -> None:
        """Progress inside a stage; the pipeline's ``progress(stage, done, total)`` callback."""
        fam = self.family(stage)
        if fam not in self._start or total <= 0 or fam == "merge":
            return  # merge rounds advance per round (see done)
        self._set(self._start[fam] + min(1.0, done / total) * self._width[fam])

    def finish(self) -> None:
        self._set(100.0, force=True)


# ---- small fsspec helpers (the run folder lives beside the collection) ----------------


def run_folder_url(collection: Any, run_id: str) -> str:
    """URL of ``runs/<collection>/<run_id>`` under the collection's store root."""
    return f"{str(collection.url).rstrip('/')}/runs/{collection.name}/{run_id}"


def _fs(url: str, storage_options: dict | None) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(url, **(storage_options or {}))


def write_bytes(url: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write one file, never leaving a torn one: tmp + rename on local disks (object
    stores replace an object in one put)."""
    fs, path = _fs(url, storage_options)
    parent = path.rsplit("/", 1)[0]
    if "file" in fs.protocol or "local" in fs.protocol:
        os.makedirs(parent, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return
    fs.pipe_file(path, data)


def read_json(url: str, storage_options: dict | None = None) -> Any:
    """Read a JSON file (FileNotFoundError when absent)."""
    fs, path = _fs(url, storage_options)
    fs.invalidate_cache()  # another process may just have written it
    return json.loads(fs.cat_file(path))


# ---- test hooks ---------------------------------------------------------------
# Used by tests/test_flows to interrupt a run at a known point; harmless when unset.

#: Stage name at whose start the flow writes HOLD_FILE and then sleeps, waiting to be
#: killed (SIGKILL from the test: a real, unclean interruption).
HOLD_AT_ENV = "CMSVD_TEST_HOLD_AT"
HOLD_FILE_ENV = "CMSVD_TEST_HOLD_FILE"


def stage_hook(stage: str) -> None:
    """Test hook called at the start of every stage task (no-op unless HOLD_AT_ENV is set).

    ``CMSVD_TEST_HOLD_AT=merge-001`` makes the run stop at the start of merge round 1
    (merge-000 is checkpointed, the merge stage is under way), write
    ``CMSVD_TEST_HOLD_FILE`` and sleep until it is killed.  Never set it in production.
    """
    if os.environ.get(HOLD_AT_ENV) != stage:
        return
    marker = os.environ.get(HOLD_FILE_ENV)
    if marker:
        Path(marker).write_text(json.dumps({"stage": stage, "pid": os.getpid()}))
    time.sleep(float(os.environ.get("CMSVD_TEST_HOLD_SECONDS", "600")))
    raise SystemExit(f"test hook: held at {stage} and nobody killed the run")
