"""Pieces shared by the flows: task options, artifact keys, the stage progress bar,
links a browser can open from the dashboard, test hooks.  Nothing here computes
anything about matrices."""

from __future__ import annotations

import datetime as _dt
import json
import mimetypes
import os
import re
import time
from pathlib import Path
from typing import Any, NamedTuple

from prefect.cache_policies import NO_CACHE

__all__ = [
    "FLOW_OPTIONS",
    "TASK_OPTIONS",
    "run_logger",
    "artifact_key",
    "is_transient",
    "StageProgress",
    "STAGE_WEIGHTS",
    "stage_hook",
    "HOLD_AT_ENV",
    "HOLD_FILE_ENV",
    "write_bytes",
    "BrowserLink",
    "browser_link",
    "LINK_EXPIRES_ENV",
    "PUBLIC_ENDPOINT_ENV",
    "local_path",
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

#: Options of every flow: prints go to the flow run's log, and parameters are checked by
#: the flow itself (``flows.params.validate_params``: every bad field on one line, before
#: any work) rather than by Prefect.
FLOW_OPTIONS: dict[str, Any] = {"log_prints": True, "validate_parameters": False}


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
    "absorb": 10.0,  # an incremental run's first stage (flows.cluster)
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


def write_bytes(url: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write one file, never leaving a torn one: tmp + rename on local disks (object
    stores replace an object in one put); storage's small-file write."""
    from storage._location import resolve

    resolve(url, storage_options).write_bytes(data)


# ---- links the dashboard can open ------------------------------------------------------
# Browsers refuse file:// links from an http page and know nothing of s3://, so the
# dashboard gets a presigned http(s) URL through the S3 endpoint where there is one.

#: Seconds a presigned link stays valid; SigV4 allows at most 7 days.
LINK_EXPIRES_ENV = "CMSVD_LINK_EXPIRES"
_DEFAULT_EXPIRES = 7 * 24 * 3600
#: Endpoint a browser reaches the object store through, when it differs from the one the
#: workers use (docker-compose: workers use http://minio:9000, the browser
#: http://localhost:9000).  The signature covers the host, so links are signed for it.
PUBLIC_ENDPOINT_ENV = "CMSVD_S3_PUBLIC_ENDPOINT"


class BrowserLink(NamedTuple):
    """An http(s) URL for a stored file and the time (UTC) it stops working (None: never)."""

    url: str
    expires: _dt.datetime | None


def _link_seconds(expires: int | None) -> int:
    if expires is None:
        expires = int(os.environ.get(LINK_EXPIRES_ENV, "") or _DEFAULT_EXPIRES)
    return max(1, min(int(expires), _DEFAULT_EXPIRES))


def browser_link(url: str, storage_options: dict | None = None, expires: int | None = None) -> BrowserLink | None:
    """A URL a web browser can open for the stored file *url*, or None.

    Parameters
    ----------
    url : str
        ``s3://bucket/key``, ``http(s)://...`` (returned as it is), or a local path /
        ``file://`` / ``memory://`` URL (None: no browser can open those from the
        dashboard).
    storage_options : dict, optional
        fsspec options of the store (``client_kwargs.endpoint_url``, keys...).
    expires : int, optional
        Validity of a presigned link in seconds; default ``CMSVD_LINK_EXPIRES`` or 7 days
        (the SigV4 maximum, also the cap).

    Returns
    -------
    BrowserLink or None
        For S3, a presigned GET URL through ``CMSVD_S3_PUBLIC_ENDPOINT``, else the store's
        endpoint (``client_kwargs.endpoint_url`` or ``CMSVD_S3_ENDPOINT``), else AWS.
        None when signing fails (no credentials): the caller shows the path instead.
    """
    if url.startswith(("http://", "https://")):
        return BrowserLink(url, None)
    if not url.startswith(("s3://", "s3a://")):
        return None
    import copy

    seconds = _link_seconds(expires)
    options = copy.deepcopy(storage_options or {})
    client_kwargs = options.setdefault("client_kwargs", {})
    endpoint = (
        os.environ.get(PUBLIC_ENDPOINT_ENV) or client_kwargs.get("endpoint_url") or os.environ.get("CMSVD_S3_ENDPOINT")
    )
    config = options.setdefault("config_kwargs", {})
    config.setdefault("signature_version", "s3v4")  # botocore presigns SigV2 otherwise
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
        # MinIO and moto serve path-style URLs; virtual hosts (bucket.localhost) need DNS
        config.setdefault("s3", {}).setdefault("addressing_style", "path")
    try:
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
        path = url.split("://", 1)[1]
        # served with its type, so the browser shows JSON/PNG/HTML instead of downloading
        kind = mimetypes.guess_type(path)[0]
        signed = fs.url(path, expires=seconds, **({"ResponseContentType": kind} if kind else {}))
    except Exception as exc:  # no credentials, no s3fs...: the path is still shown
        run_logger().warning("no browser link for %s: %s", url, exc)
        return None
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    return BrowserLink(signed, now + _dt.timedelta(seconds=seconds))


def local_path(url: str) -> str:
    """The path to show for copying: ``file://`` stripped, other URLs unchanged."""
    return url[len("file://"):] if url.startswith("file://") else url


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
