"""Run folders and their checkpoints: ``<root>/runs/<collection>/<run_id>/<stage>/``.

A *run* is one clustering of a collection with given parameters, named by its run id;
its *run folder* is ``<root>/runs/<collection>/<run_id>/``.  :class:`Run` is that folder
(the stages themselves are computed by ``pipeline.distributed.ClusteringRun``, which
holds one as its ``.run`` attribute, or by ``cmsvd cluster --sequential``).

A run folder holds ``run.json`` (run id, collection, parameters and their fingerprint,
input fingerprint), written when the run is first opened.  Each stage folder holds
one ``<array>.npy`` file per array and a ``manifest.json`` written *last*; a stage
without a manifest is absent, whatever else its folder contains.  The manifest
records the stage status, the run's parameter and input fingerprints, and for every
array its file name, byte size and sha256 of the file bytes (header included, so a
change of shape or dtype is caught too).  Loading re-hashes every file and refuses
anything that does not match.

Files go through fsspec, so the same code works on local disk, ``memory://`` and S3.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
import io
from typing import Any

import numpy as np

from ._integrity import parse_json, seal, unseal
from ._location import Location, fingerprint_of, json_dumps, resolve, run_location, utc_now as _now
from ._names import check_name
from .errors import CheckpointError, CorruptedFileError, RunMismatchError
from .lease import RunLease, check_lease

MANIFEST = "manifest.json"
RUN_FILE = "run.json"


def _normalise(obj: Any) -> Any:
    """JSON round trip so that tuples/numpy scalars compare equal to what was stored."""
    import json

    return json.loads(json_dumps(obj))


def _diff(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k, '<missing>')!r} != {new.get(k, '<missing>')!r}" for k in keys if old.get(k) != new.get(k)]


def open_run(
    url: str,
    collection_name: str,
    run_id: str,
    params: dict,
    input_fingerprint: str,
    *,
    storage_options: dict | None = None,
) -> "Run":
    """Open (creating on first use) the run *run_id* of a collection.

    Parameters
    ----------
    url, collection_name : str
        Root URL and collection the run works on.
    run_id : str
        Safe path component.
    params : dict
        JSON-serialisable parameters; their fingerprint is fixed for the run's life.
    input_fingerprint : str
        Typically ``Collection.fingerprint()``.

    Raises
    ------
    RunMismatchError
        The run exists with other parameters or another input fingerprint.
    """
    loc = run_location(resolve(url, storage_options), collection_name, run_id)
    params = _normalise(params)
    record = {
        "run_id": run_id,
        "collection": collection_name,
        "params": params,
        "params_fingerprint": fingerprint_of(params),
        "input_fingerprint": str(input_fingerprint),
    }
    loc.invalidate()
    if loc.exists(RUN_FILE):
        where = loc.child(RUN_FILE).url
        old = unseal(parse_json(loc.read_bytes(RUN_FILE), where), where)
        missing = [k for k in ("run_id", "params_fingerprint", "input_fingerprint") if not isinstance(old.get(k), str)]
        if missing:
            raise CorruptedFileError(f"run {run_id!r}: {where} is corrupted (no {', '.join(missing)})", path=where)
        problems = []
        if old.get("params_fingerprint") != record["params_fingerprint"]:
            problems.append("parameters differ (" + "; ".join(_diff(old.get("params", {}), params)) + ")")
        if old.get("input_fingerprint") != record["input_fingerprint"]:
            problems.append(
                f"input fingerprint differs ({old.get('input_fingerprint')} != {record['input_fingerprint']}):"
                " the collection changed"
            )
        if problems:
            raise RunMismatchError(f"run {run_id!r} of collection {collection_name!r}: " + "; ".join(problems))
        record = old
    else:
        record["created"] = _now()
        loc.write_json(seal(record), RUN_FILE)
    return Run(loc, record)


class Run:
    """The run folder of one run: its record (run.json) and stage checkpoints.  Obtain
    with :func:`open_run`.

    Attributes
    ----------
    run_id, collection : str
    params : dict
    params_fingerprint, input_fingerprint : str
    url : str
        URL of the run folder.
    """

    def __init__(self, loc: Location, record: dict) -> None:
        self._loc = loc
        self.run_id: str = record["run_id"]
        self.collection: str = record["collection"]
        self.params: dict = record["params"]
        self.params_fingerprint: str = record["params_fingerprint"]
        self.input_fingerprint: str = record["input_fingerprint"]
        self._lease: RunLease | None = None

    def lease(self, *, owner: str | None = None, ttl_s: float = 60.0, wait_s: float = 0.0, poll_s: float = 0.5) -> RunLease:
        """The run's writer lease (acquire it with ``with run.lease(): ...``).

        While it is held, :meth:`save_stage` and :meth:`delete_stage` first check that it
        was not lost, so a writer whose lease expired and was taken over cannot commit.
        See :mod:`storage.lease`; readers never need it.

        Parameters
        ----------
        owner : str, optional
            Shown to other writers; default ``host:pid:thread``.
        ttl_s : float
            Expiry of one renewal (a heartbeat thread renews every ``ttl_s / 3``).
        wait_s : float
            Wait this long for another holder before raising :class:`RunLeaseError`.
        """
        label = f"run {self.run_id!r} of collection {self.collection!r}"
        self._lease = RunLease(self._loc, label, owner=owner, ttl_s=ttl_s, wait_s=wait_s, poll_s=poll_s)
        return self._lease

    def require_lease(self, token: str | None) -> "Run":
        """Commit only while the run's lease on the store has *token* (``RunLease.token``).

        For worker processes that write stages for a driver holding the lease: pass the
        driver's ``lease.token``; each :meth:`save_stage` / :meth:`delete_stage` then reads
        the lease first and raises :class:`LeaseLostError` if the driver lost it.
        ``None`` turns the check off.  Returns the run.
        """
        self._lease_token = token
        return self

    def _check_lease(self) -> None:
        if self._lease is not None and self._lease._held:
            self._lease.check()
        token = getattr(self, "_lease_token", None)
        if token is not None:
            check_lease(self._loc, f"run {self.run_id!r} of collection {self.collection!r}", token)

    @property
    def url(self) -> str:
        return self._loc.url

    def __repr__(self) -> str:
        return f"Run({self.run_id!r}, collection={self.collection!r}, url={self.url!r})"

    def _stage(self, stage: str) -> Location:
        return self._loc.child(check_name(stage, "stage name"))

    def _manifest(self, stage: str) -> dict | None:
        loc = self._stage(stage)
        where = loc.child(MANIFEST).url
        try:
            raw = loc.read_bytes(MANIFEST)
        except FileNotFoundError:
            return None
        try:
            return unseal(parse_json(raw, where), where)
        except CorruptedFileError as exc:
            raise CheckpointError(
                f"stage {stage!r} of run {self.run_id!r}: {exc}; delete {loc.url} to recompute the stage"
            ) from None

    def is_complete(self, stage: str) -> bool:
        """True if the stage's manifest exists, says complete and belongs to this run's
        parameters and input.  (Cheap: does not hash; :meth:`load_stage` does.)

        Raises
        ------
        CheckpointError
            The manifest exists but is damaged (not JSON, bad seal): reported, never
            silently recomputed over.
        """
        self._loc.invalidate()
        m = self._manifest(stage)
        return bool(
            m
            and m.get("status") == "complete"
            and m.get("params_fingerprint") == self.params_fingerprint
            and m.get("input_fingerprint") == self.input_fingerprint
        )

    def stage_meta(self, stage: str) -> dict:
        """Metadata of a complete stage, read from its manifest without loading arrays.

        Raises
        ------
        CheckpointError
            The stage is not complete.
        """
        if not self.is_complete(stage):
            raise CheckpointError(f"stage {stage!r} of run {self.run_id!r} is not complete")
        return dict((self._manifest(stage) or {}).get("meta") or {})

    def stages(self) -> list[str]:
        """Names of the complete stages, sorted."""
        self._loc.invalidate()
        names = set()
        for rel in self._loc.files():
            parts = rel.split("/")
            if len(parts) == 2 and parts[1] == MANIFEST:
                names.add(parts[0])
        return sorted(s for s in names if self.is_complete(s))

    def save_stage(self, stage: str, arrays: dict[str, np.ndarray], meta: dict | None = None) -> None:
        """Write a stage: arrays first, manifest last.

        Parameters
        ----------
        stage : str
            Safe path component, e.g. ``"scan"``, ``"merge-003"``.
        arrays : dict of str -> ndarray
            Any shape and (non-object) dtype; ragged data as flat + offsets.
        meta : dict, optional
            JSON-serialisable stage metadata.
        """
        loc = self._stage(stage)
        checked = {check_name(k, "array name"): np.asarray(v) for k, v in arrays.items()}
        for k, v in checked.items():
            if v.dtype.hasobject:
                raise ValueError(f"stage {stage!r}: array {k!r} has dtype object, which cannot be checkpointed")
        meta_json = _normalise(meta or {})  # fail on unserialisable meta before touching disk
        self._check_lease()
        loc.rm(MANIFEST)  # the old copy stops counting before any file changes
        loc.rm()
        entries = {}
        for key, value in checked.items():
            buf = io.BytesIO()
            np.save(buf, value, allow_pickle=False)
            data = buf.getvalue()
            loc.write_bytes(data, f"{key}.npy")
            entries[key] = {
                "file": f"{key}.npy",
                "nbytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "shape": list(value.shape),
                "dtype": value.dtype.str,
            }
        self._check_lease()  # a writer that lost its lease must not commit
        manifest = {
            "stage": stage,
            "run_id": self.run_id,
            "status": "complete",
            "params_fingerprint": self.params_fingerprint,
            "input_fingerprint": self.input_fingerprint,
            "arrays": entries,
            "meta": meta_json,
            "written": _now(),
        }
        loc.write_json(seal(manifest), MANIFEST)

    def _checked_manifest(self, stage: str) -> dict:
        self._loc.invalidate()
        m = self._manifest(stage)
        where = f"stage {stage!r} of run {self.run_id!r}"
        if m is None:
            raise CheckpointError(f"{where}: not complete (no manifest)")
        if m.get("status") != "complete":
            raise CheckpointError(f"{where}: status {m.get('status')!r}")
        if m.get("params_fingerprint") != self.params_fingerprint or m.get("input_fingerprint") != self.input_fingerprint:
            raise CheckpointError(f"{where}: written for other parameters or another input")
        return m

    def _read_array_bytes(self, stage: str, key: str, entry: dict) -> bytes:
        where = f"stage {stage!r} of run {self.run_id!r}, array {key!r}"
        try:
            data = self._stage(stage).read_bytes(entry["file"])
        except FileNotFoundError:
            raise CheckpointError(f"{where}: file {entry['file']} is missing") from None
        if len(data) != entry["nbytes"]:
            raise CheckpointError(f"{where}: truncated or resized ({len(data)} bytes, manifest says {entry['nbytes']})")
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise CheckpointError(f"{where}: sha256 mismatch (corrupted)")
        return data

    def verify_stage(self, stage: str) -> dict:
        """Re-hash every array of a complete stage.

        Returns
        -------
        dict
            The manifest.

        Raises
        ------
        CheckpointError
            Missing manifest or array file, size or hash mismatch; names the stage and
            every bad array.
        """
        m = self._checked_manifest(stage)
        problems = []
        for key, entry in m["arrays"].items():
            try:
                self._read_array_bytes(stage, key, entry)
            except CheckpointError as exc:
                problems.append(str(exc))
        if problems:  # report every bad array at once
            raise CheckpointError("; ".join(problems))
        return m

    def load_stage(self, stage: str, keys: Iterable[str] | None = None) -> tuple[dict[str, np.ndarray], dict]:
        """Load a complete stage (or only the arrays ``keys`` of it) after verifying hashes.

        Returns
        -------
        arrays : dict of str -> ndarray
        meta : dict

        Raises
        ------
        CheckpointError
            As :meth:`verify_stage`; corrupt data is never returned.
        """
        m = self._checked_manifest(stage)
        wanted = m["arrays"] if keys is None else list(keys)
        arrays = {}
        for key in wanted:
            entry = m["arrays"].get(key)
            if entry is None:
                raise CheckpointError(f"stage {stage!r} of run {self.run_id!r}: no array {key!r}")
            data = self._read_array_bytes(stage, key, entry)
            arrays[key] = np.load(io.BytesIO(data), allow_pickle=False)
        return arrays, m.get("meta", {})

    def delete_stage(self, stage: str) -> None:
        """Forget a stage (manifest first)."""
        self._check_lease()
        loc = self._stage(stage)
        loc.rm(MANIFEST)
        loc.rm()


__all__ = ["Run", "open_run"]
