"""URL resolution, safe names, file helpers and the publish step shared by the package.

A *root* URL (local path, ``file://``, ``memory://``, ``s3://bucket/prefix``) holds:

- ``<root>/<collection>/``               one published Zarr v3 group per collection
- ``<root>/.staging/<name>-<uuid>/``      collections being written (never read)
- ``<root>/runs/<collection>/<run_id>/``  run checkpoints, beside the collection
- ``<root>/artifacts/<collection>/<label>/`` compressed artifacts
- ``<root>/artifacts/<collection>/.staging/<label>/`` artifacts being written

Publishing: on a local filesystem the staged directory is moved into place with one
``os.rename`` (atomic).  Object stores have no rename, so the staged objects are copied
server-side with the *marker* object (the group's root ``zarr.json`` for collections,
``manifest.json`` for artifacts) copied last; readers treat a prefix without its marker
as absent, so a half-copied prefix is never visible.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import zarr

from .errors import InvalidNameError

SCHEMA_VERSION = 1
RESERVED_NAMES = frozenset({"runs", "artifacts", "zarr.json"})
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")


def check_name(name: str, what: str = "name") -> str:
    """Return *name* if it is a safe single path component, else raise.

    Parameters
    ----------
    name : str
        Candidate collection, run, stage, label or array name.
    what : str
        Word used in the error message ("collection name", "stage name"...).

    Raises
    ------
    InvalidNameError
        For path separators, ``..``, leading dots, empty or over-long names, or a
        name reserved for the storage layout.
    """
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name:
        raise InvalidNameError(
            f"invalid {what} {name!r}: use 1-128 characters from [A-Za-z0-9._-], "
            "starting with a letter or digit, without '..' or path separators"
        )
    if name in RESERVED_NAMES:
        raise InvalidNameError(f"invalid {what} {name!r}: reserved by the storage layout")
    return name


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

    def child(self, *parts: str) -> "Location":
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
            os.makedirs(os.path.dirname(target.path), exist_ok=True)
            tmp = f"{target.path}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, target.path)
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


def fingerprint_of(obj: Any) -> str:
    """sha256 of the canonical JSON form of *obj*."""
    return hashlib.sha256(json_dumps(obj).encode()).hexdigest()


def publish(staged: Location, final: Location, marker: str, overwrite: bool) -> None:
    """Make *staged* visible as *final*, atomically for readers.

    Parameters
    ----------
    staged, final : Location
        Fully written staging directory and its destination.
    marker : str
        Relative path of the object whose presence means "published"; copied last on
        object stores and removed first when an old copy is replaced.
    overwrite : bool
        Replace an existing published *final*.  Otherwise the caller has checked.
    """
    if final.is_local:
        _publish_local(staged, final, overwrite)
        return
    final.invalidate()
    if final.exists(marker):
        if not overwrite:
            raise FileExistsError(final.url)
        final.rm(marker)  # old copy becomes invisible before anything else changes
    final.rm()  # leftovers of an interrupted publish or of the replaced copy
    rel = [r for r in staged.files() if r != marker]
    if rel:
        staged.fs.copy([staged.child(r).path for r in rel], [final.child(r).path for r in rel])
    staged.fs.copy(staged.child(marker).path, final.child(marker).path)
    staged.rm()
    final.invalidate()


def _publish_local(staged: Location, final: Location, overwrite: bool) -> None:
    os.makedirs(os.path.dirname(final.path), exist_ok=True)
    trash = None
    if os.path.exists(final.path):
        if not overwrite:
            raise FileExistsError(final.path)
        trash = f"{os.path.dirname(final.path)}/.trash-{uuid.uuid4().hex}"
        os.rename(final.path, trash)
    os.rename(staged.path, final.path)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
