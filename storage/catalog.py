"""What a store holds for a collection: its runs and artifacts, listed and read.

The public listing API over one store root. Paths come from :mod:`storage._location`,
the one module that spells the store layout; callers never build store paths.
"""

from __future__ import annotations

import json
from typing import Any

from ._artifact_reader import MANIFEST as ARTIFACT_MANIFEST
from ._integrity import parse_json
from ._location import artifact_location, resolve, run_location
from ._names import is_safe_name
from .errors import RunNotFoundError
from .runs import MANIFEST as STAGE_MANIFEST, RUN_FILE

__all__ = ["run_url", "list_runs", "list_artifacts", "read_run_record", "read_run_json", "read_run_bytes",
           "write_run_file"]


def _root(collection):
    return resolve(collection.url, collection.storage_options)


def run_url(collection, run_id: str) -> str:
    """URL of the folder of run ``run_id`` of ``collection`` (names checked).

    Raises
    ------
    storage.InvalidNameError
        ``run_id`` or the collection name is not one safe path component.
    """
    return run_location(_root(collection), collection.name, run_id).url


def _glob(base, pattern: str) -> tuple[Any, list[str]]:
    base.fs.invalidate_cache()
    try:
        return base.fs, base.fs.glob(f"{base.path.rstrip('/')}/{pattern}")
    except FileNotFoundError:
        return base.fs, []


def list_runs(collection) -> list[dict]:
    """Runs of a collection, oldest first: ``run_id``, ``created``, ``mode``,
    ``parent_run`` (the run an incremental run updated, else None), the main ``params``, ``compressed`` (its compress stage is complete), ``report`` (it has a
    report.json) and ``current`` (made from the collection's present contents).

    Folders that are not valid run ids, or whose record does not parse, were not written
    by cmsvd and are skipped: every id returned is a safe name.
    """
    fs, files = _glob(run_location(_root(collection), collection.name), f"*/{RUN_FILE}")
    out = []
    for f in files:
        run_dir = f.rsplit("/", 1)[0]
        run_id = run_dir.rsplit("/", 1)[-1]  # the folder names the run, not run.json's copy
        if not is_safe_name(run_id):
            continue
        try:
            record = json.loads(fs.cat_file(f))
        except Exception:  # noqa: BLE001  (unreadable: not offered as a run)
            continue
        params = record.get("params", {})
        out.append({
            "run_id": run_id,
            "created": record.get("created", ""),
            "mode": params.get("mode", "distributed"),
            "parent_run": params.get("parent_run"),
            "params": {k: params.get(k) for k in ("rank", "eps", "method", "order")},
            "compressed": fs.exists(f"{run_dir}/compress/{STAGE_MANIFEST}"),
            "report": fs.exists(f"{run_dir}/report.json"),
            "current": record.get("input_fingerprint") == collection.fingerprint(),
        })
    return sorted(out, key=lambda r: (r["created"], r["run_id"]))


def list_artifacts(collection) -> list[dict]:
    """Published artifacts of a collection, oldest first: ``label`` and ``written``."""
    fs, files = _glob(artifact_location(_root(collection), collection.name), f"*/{ARTIFACT_MANIFEST}")
    out = []
    for f in files:
        label = f.rsplit("/", 2)[-2]
        if not is_safe_name(label):  # the staging folder and anything cmsvd did not write
            continue
        try:
            written = json.loads(fs.cat_file(f)).get("written", "")
        except Exception:  # noqa: BLE001
            written = ""
        out.append({"label": label, "written": written})
    return sorted(out, key=lambda a: (a["written"], a["label"]))


def read_run_bytes(collection, run_id: str, name: str) -> bytes | None:
    """The bytes of file ``name`` of a run's folder (report.html, plots), None if absent."""
    loc = run_location(_root(collection), collection.name, run_id)
    loc.invalidate()
    return loc.read_bytes(name) if loc.exists(name) else None


def read_run_json(collection, run_id: str, name: str) -> dict | None:
    """A JSON file (``report.json``...) of a run's folder, or None when absent.

    Raises
    ------
    storage.CorruptedFileError
        The file exists but is not valid JSON.
    """
    data = read_run_bytes(collection, run_id, name)
    return None if data is None else parse_json(data, f"{run_url(collection, run_id)}/{name}")


def read_run_record(collection, run_id: str) -> dict:
    """The run's record (``run.json``: params, fingerprints, created).

    Raises
    ------
    storage.RunNotFoundError
        No such run (a ``FileNotFoundError``).
    """
    record = read_run_json(collection, run_id, RUN_FILE)
    if record is None:
        raise RunNotFoundError(f"no run {run_id!r} for collection {collection.name!r} "
                               f"(looked for {run_url(collection, run_id)}/{RUN_FILE})")
    return record


def write_run_file(collection, run_id: str, name: str, data: bytes) -> str:
    """Write ``data`` as file ``name`` of a run's folder (reports, plots); returns its URL."""
    loc = run_location(_root(collection), collection.name, run_id)
    loc.write_bytes(data, name)
    return loc.child(name).url

