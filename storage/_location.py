"""Where things are: root URLs, the store layout, small-file helpers and canonical JSON.

A *root* URL (local path, ``file://``, ``memory://``, ``s3://bucket/prefix``) holds:

- ``<root>/<collection>/``               one published Zarr v3 group per collection
- ``<root>/.staging/<name>-<uuid>/``      collections being written (never read)
- ``<root>/runs/<collection>/<run_id>/``  one folder per clustering run (its stages'
  checkpoints, run.json, reports), beside the collection
- ``<root>/artifacts/<collection>/<label>/`` compressed artifacts
- ``<root>/artifacts/<collection>/.staging/<label>/`` artifacts being written

This module is the only one that spells these paths (:func:`run_location`,
:func:`artifact_location`).  Names are checked in :mod:`storage._names`; how a staged
folder is put in place (rename on disk, a version pointer on object stores) is
:mod:`storage._publish`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import zarr

from ._names import check_name

SCHEMA_VERSION = 2  # 2: crc32c-checksummed chunks, every chunk written, sealed records


def write_temp_file(path: str, data: bytes) -> str:
    """Write *data* to a fresh temporary file beside local *path*; return its path.

    The caller moves it into place (rename, link), so a crash never leaves a torn file.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
    return tmp


def _env_options(protocol: str) -> dict[str, Any]:
    # CMSVD_S3_ENDPOINT lets CLI users and workers point at MinIO/moto without code.
    endpoint = os.environ.get("CMSVD_S3_ENDPOINT")
    if protocol in ("s3", "s3a") and endpoint:
        return {"client_kwargs": {"endpoint_url": endpoint}}
    return {}


@dataclass(frozen=True)
class Location:
    """A directory-like place on some fsspec filesystem.

    Attributes
    ----------
    fs : fsspec.AbstractFileSystem
        Synchronous filesystem used for plain file operations.
    path : str
        Path inside *fs* (no protocol, no trailing slash).
    protocol : str
        ``"file"``, ``"memory"``, ``"s3"``...
    storage_options : dict
        Options used to build *fs*, reused for the Zarr store.
    """

    fs: Any
    path: str
    protocol: str
    storage_options: dict = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return self.protocol in ("file", "local")

    @property
    def url(self) -> str:
        if self.is_local:
            return self.path
        return f"{self.protocol}://{self.path.lstrip('/')}"

    def child(self, *parts: str) -> Location:
        path = "/".join([self.path.rstrip("/"), *[p.strip("/") for p in parts]])
        return Location(self.fs, path, self.protocol, self.storage_options)

    def zarr_store(self, read_only: bool = False) -> Any:
        """A Zarr v3 store rooted here (LocalStore locally, FsspecStore otherwise)."""
        if self.is_local:
            return zarr.storage.LocalStore(self.path, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(
            self.url, storage_options=dict(self.storage_options) or None, read_only=read_only
        )

    # ---- small file helpers -------------------------------------------------
    def exists(self, *parts: str) -> bool:
        target = self.child(*parts) if parts else self
        return bool(self.fs.exists(target.path))

    def invalidate(self) -> None:
        # s3fs caches listings per instance; another process may have written.
        try:
            self.fs.invalidate_cache(self.path)
        except Exception:  # pragma: no cover - caching is an optimisation only
            pass

    def read_bytes(self, *parts: str) -> bytes:
        return self.fs.cat_file(self.child(*parts).path)

    def write_bytes(self, data: bytes, *parts: str) -> None:
        target = self.child(*parts)
        if self.is_local:
            # tmp + rename so a crash never leaves a torn small file (manifests).
            os.replace(write_temp_file(target.path, data), target.path)
        else:
            self.fs.pipe_file(target.path, data)

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_bytes(*parts))

    def write_json(self, obj: Any, *parts: str) -> None:
        self.write_bytes(json_dumps(obj).encode(), *parts)

    def rm(self, *parts: str) -> None:
        target = self.child(*parts) if parts else self
        try:
            if self.is_local and os.path.isdir(target.path):
                shutil.rmtree(target.path)
            else:
                self.fs.rm(target.path, recursive=True)
        except FileNotFoundError:
            pass

    def files(self) -> list[str]:
        """Relative paths of every file below this location (sorted)."""
        self.invalidate()
        try:
            found = self.fs.find(self.path)
        except FileNotFoundError:
            return []
        prefix = self.fs._strip_protocol(self.path).rstrip("/") + "/"
        return sorted(f[len(prefix):] for f in found if f.startswith(prefix))

    def du(self) -> int:
        """Total bytes stored below this location."""
        self.invalidate()
        try:
            return int(self.fs.du(self.path, total=True))
        except FileNotFoundError:
            return 0



# ---- the store layout: every path below a root is spelt here --------------------------

RUNS_DIR, ARTIFACTS_DIR, STAGING_DIR = "runs", "artifacts", ".staging"


def run_location(root: Location, collection_name: str, run_id: str | None = None) -> Location:
    """``<root>/runs/<collection>[/<run_id>]`` (names checked: one safe path part each)."""
    check_name(collection_name, "collection name")
    if run_id is None:
        return root.child(RUNS_DIR, collection_name)
    check_name(run_id, "run id")
    return root.child(RUNS_DIR, collection_name, run_id)


def artifact_location(root: Location, collection_name: str, label: str | None = None,
                      staging: bool = False) -> Location:
    """``<root>/artifacts/<collection>[/.staging][/<label>]`` (names checked)."""
    check_name(collection_name, "collection name")
    base = root.child(ARTIFACTS_DIR, collection_name)
    if staging:
        base = base.child(STAGING_DIR)
    if label is None:
        return base
    check_name(label, "artifact label")
    return base.child(label)


def resolve(url: str | os.PathLike, storage_options: dict | None = None) -> Location:
    """Turn a root URL into a :class:`Location`.

    Parameters
    ----------
    url : str or path-like
        Local path, ``file://``, ``memory://`` or ``s3://`` URL.
    storage_options : dict, optional
        Passed to fsspec (for S3 e.g. ``{"client_kwargs": {"endpoint_url": ...}}``);
        the ``CMSVD_S3_ENDPOINT`` environment variable is used when not given.
    """
    url = os.fspath(url)
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    opts = {**_env_options(protocol), **(storage_options or {})}
    if protocol in ("file", "local"):
        path = os.path.abspath(url.split("://", 1)[-1] if "://" in url else url)
        return Location(fsspec.filesystem("file"), path, "file", {})
    fs, path = fsspec.core.url_to_fs(url, **opts)
    return Location(fs, path.rstrip("/") or path, protocol, opts)


def json_default(obj: Any) -> Any:
    """JSON encoder hook for numpy scalars and arrays."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"value of type {type(obj).__name__} is not JSON serialisable")


def json_dumps(obj: Any) -> str:
    """Canonical JSON (sorted keys) used for manifests and fingerprints."""
    return json.dumps(obj, sort_keys=True, default=json_default, separators=(",", ":"))


def utc_now() -> str:
    """The current UTC time to the second, ISO 8601: the ``created``/``written`` stamps of records."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def fingerprint_of(obj: Any) -> str:
    """sha256 of the canonical JSON form of *obj*."""
    return hashlib.sha256(json_dumps(obj).encode()).hexdigest()
