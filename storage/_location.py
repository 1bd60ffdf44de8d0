"""URL resolution, safe names, file helpers and the publish step shared by the package.

A *root* URL (local path, ``file://``, ``memory://``, ``s3://bucket/prefix``) holds:

- ``<root>/<collection>/``               one published Zarr v3 group per collection
- ``<root>/.staging/<name>-<uuid>/``      collections being written (never read)
- ``<root>/runs/<collection>/<run_id>/``  run checkpoints, beside the collection
- ``<root>/artifacts/<collection>/<label>/`` compressed artifacts
- ``<root>/artifacts/<collection>/.staging/<label>/`` artifacts being written

Publishing: on a local filesystem the staged directory is moved into place with one
``os.rename`` (atomic), an overwrite swaps the directories atomically.  Object stores
have no rename: a publish writes a fresh version prefix and switches a small pointer
object last (see :func:`switch_pointer`), so readers see the old version or the new
one, whole, and never a half-copied or deleted prefix.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import zarr

from .errors import InvalidNameError

SCHEMA_VERSION = 2  # 2: crc32c-checksummed chunks, every chunk written, sealed records
RESERVED_NAMES = frozenset({"runs", "artifacts", "zarr.json"})  # RUNS_DIR, ARTIFACTS_DIR below
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


#: Longest block name accepted (names live in the collection's attributes, read whole).
MAX_BLOCK_NAME = 1024
# bidirectional overrides and isolates: they reorder what a terminal shows
_BIDI_CONTROLS = frozenset(map(chr, (*range(0x202A, 0x202F), *range(0x2066, 0x206A))))
# control (C0, DEL, C1), surrogate, line and paragraph separator characters
_CONTROL_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to *limit* characters, for error messages about odd names."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def block_name_problem(name: Any) -> str | None:
    """Why *name* cannot be a block name, or None if it can.

    Block names are labels in the collection's attributes, never paths, so the rule is
    wider than :func:`check_name`: the names of every supported format stay valid
    (safetensors ``layers.0.attn.weight``, npz members and HDF5 datasets with ``/``,
    ``stem[3]`` of a stacked .npy, any printable Unicode).  Refused: non-strings, empty
    names, more than :data:`MAX_BLOCK_NAME` characters, control characters (NUL, newline,
    tab, DEL, C1, U+2028/2029, bidirectional overrides), a leading ``/`` and ``.`` or
    ``..`` segments (so a name never reads as a path out of somewhere).

    Parameters
    ----------
    name : object
        Candidate block name.

    Returns
    -------
    str or None
        A short phrase naming the problem (without the name itself), e.g.
        ``control character U+000A at position 3``.
    """
    if not isinstance(name, str):
        return f"not a string but {type(name).__name__}"
    if not name:
        return "empty"
    if len(name) > MAX_BLOCK_NAME:
        return f"{len(name)} characters, at most {MAX_BLOCK_NAME} allowed"
    import unicodedata

    for pos, ch in enumerate(name):
        if ch in _BIDI_CONTROLS or unicodedata.category(ch) in _CONTROL_CATEGORIES:
            return f"control character U+{ord(ch):04X} at position {pos}"
    if name.startswith("/"):
        return "starts with '/'"
    if any(part in (".", "..") for part in name.split("/")):
        return "has a '.' or '..' path segment"
    return None


def check_block_name(name: Any) -> str:
    """Return *name* if :func:`block_name_problem` finds nothing, else raise.

    Raises
    ------
    InvalidNameError
        Naming the (shortened) name and the problem.
    """
    problem = block_name_problem(name)
    if problem:
        raise InvalidNameError(f"invalid block name {short_repr(name)}: {problem}")
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


def is_safe_name(value: Any) -> bool:
    """Whether ``value`` passes :func:`check_name` (for names read back from a store)."""
    try:
        check_name(value)
    except InvalidNameError:
        return False
    return True


# ---- the store layout: every path below a root is spelt here --------------------------

RUNS_DIR, ARTIFACTS_DIR, STAGING_DIR = "runs", "artifacts", ".staging"


def run_location(root: "Location", collection_name: str, run_id: str | None = None) -> "Location":
    """``<root>/runs/<collection>[/<run_id>]`` (names checked: one safe path part each)."""
    check_name(collection_name, "collection name")
    if run_id is None:
        return root.child(RUNS_DIR, collection_name)
    check_name(run_id, "run id")
    return root.child(RUNS_DIR, collection_name, run_id)


def artifact_location(root: "Location", collection_name: str, label: str | None = None,
                      staging: bool = False) -> "Location":
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


def fingerprint_of(obj: Any) -> str:
    """sha256 of the canonical JSON form of *obj*."""
    return hashlib.sha256(json_dumps(obj).encode()).hexdigest()


# ---- publishing ----------------------------------------------------------------------------
#
# Local disk: the staged directory is renamed into place (atomic); an overwrite swaps the two
# directories with renameat2(RENAME_EXCHANGE), so the name never points at nothing.
# Object stores have no rename: each publish writes a fresh version prefix
# ``<final>/v-<UTC time>-<hex>/`` and then switches a small pointer object; older versions
# are garbage-collected afterwards.  At every moment the old version or the new one is whole.

POINTER = "current.json"
VERSION_PREFIX = "v-"
#: Unreferenced staging folders and versions older than this are removed by later writers.
STALE_AFTER_S = 24 * 3600.0
_VERSION_RE = re.compile(r"(?:^|-)(\d{8}T\d{6})(?:\.\d{6})?-[0-9a-f]{8,}$")


def new_version_name(prefix: str = VERSION_PREFIX) -> str:
    """A fresh, time-ordered version or staging name: ``<prefix><UTC time>.<µs>-<hex>``."""
    # microseconds: names of one writer after another sort in time order
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%f")
    return f"{prefix}{now}-{uuid.uuid4().hex[:12]}"


def name_age_s(name: str) -> float | None:
    """Seconds since the time embedded in a version/staging name (None without one)."""
    m = _VERSION_RE.search(name)
    if not m:
        return None
    t = _dt.datetime.strptime(m.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=_dt.timezone.utc)
    return (_dt.datetime.now(_dt.timezone.utc) - t).total_seconds()


def publish_local(staged: Location, final: Location, overwrite: bool) -> None:
    """Move a staged directory into place on local disk (atomic for readers).

    Raises
    ------
    FileExistsError
        *final* exists and *overwrite* is false.
    """
    os.makedirs(os.path.dirname(final.path), exist_ok=True)
    if not os.path.exists(final.path):
        try:
            os.rename(staged.path, final.path)
            return
        except OSError as exc:  # another publisher won the race (non-empty target)
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        if not overwrite:
            raise FileExistsError(final.path)
    elif not overwrite:
        raise FileExistsError(final.path)
    if _rename_exchange(staged.path, final.path):
        shutil.rmtree(staged.path, ignore_errors=True)  # now holds the old copy
        return
    # no RENAME_EXCHANGE (old kernel, NFS...): two renames, a microsecond-wide gap
    trash = f"{os.path.dirname(final.path)}/.trash-{uuid.uuid4().hex}"
    os.rename(final.path, trash)
    os.rename(staged.path, final.path)
    shutil.rmtree(trash, ignore_errors=True)


def _rename_exchange(a: str, b: str) -> bool:
    """Atomically swap two paths (Linux renameat2); False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), b)


def write_exclusive(loc: Location, data: bytes, *parts: str) -> None:
    """Create a small object only if it does not exist (O_EXCL; S3 If-None-Match).

    Raises
    ------
    FileExistsError
        It exists already.
    """
    target = loc.child(*parts)
    if loc.is_local:
        os.makedirs(os.path.dirname(target.path), exist_ok=True)
        tmp = f"{target.path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, target.path)  # atomic, fails if it exists, never torn
        except FileExistsError:
            raise
        except OSError:  # no hard links here (some FUSE/SMB mounts): plain O_EXCL
            fd = os.open(target.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        finally:
            os.unlink(tmp)
        return
    try:
        loc.fs.pipe_file(target.path, data, mode="create")
    except FileExistsError:
        raise
    except Exception as exc:  # s3fs maps 412 PreconditionFailed to a generic OSError
        if is_precondition_failure(exc):
            raise FileExistsError(target.path) from None
        raise


def is_precondition_failure(exc: BaseException) -> bool:
    """Whether an object-store error is HTTP 412 / 409 (a conditional write lost)."""
    text = str(exc).lower().replace("-", "")
    return "precondition" in text or "412" in text or "conditionalrequestconflict" in text


def read_pointer(final: Location, pointer: str = POINTER) -> dict | None:
    """The pointer record of a versioned prefix, or None if there is none.

    Raises
    ------
    CorruptedFileError
        The pointer is not valid JSON, has a bad seal or names an unsafe version.
    """
    from ._integrity import parse_json, unseal
    from .errors import CorruptedFileError

    where = final.child(pointer).url
    try:
        raw = final.read_bytes(pointer)
    except FileNotFoundError:
        return None
    record = unseal(parse_json(raw, where), where)
    version = record.get("version")
    if version is not None and (not isinstance(version, str) or not version.startswith(VERSION_PREFIX) or "/" in version or ".." in version):
        raise CorruptedFileError(f"{where} is corrupted (bad version {version!r})", path=where)
    return record


def switch_pointer(final: Location, record: dict, overwrite: bool, pointer: str = POINTER) -> str | None:
    """Publish a version by writing the pointer last; return the replaced version.

    Raises
    ------
    FileExistsError
        A pointer exists and *overwrite* is false.
    """
    from ._integrity import seal

    final.invalidate()
    old = None
    try:
        old = read_pointer(final, pointer)
    except Exception:  # a damaged old pointer is simply replaced when overwriting
        if not overwrite:
            raise
    data = json_dumps(seal(record)).encode()
    if overwrite:
        final.write_bytes(data, pointer)
    else:
        write_exclusive(final, data, pointer)
    final.invalidate()
    return (old or {}).get("version")


def collect_versions(final: Location, current: str, keep: frozenset[str] = frozenset(), pointer: str = POINTER) -> None:
    """Remove what the pointer no longer references (best effort).

    Versions older than *current* (replaced, or abandoned by a killed writer), versions
    and legacy in-place files left beside them.  Younger unreferenced versions are kept
    unless older than :data:`STALE_AFTER_S` (they may belong to a writer still running).
    """
    final.invalidate()
    try:
        entries = final.fs.ls(final.path, detail=False)
    except FileNotFoundError:
        return
    for entry in entries:
        base = entry.rstrip("/").rsplit("/", 1)[-1]
        if base in (pointer, current) or base in keep:
            continue
        if base.startswith(VERSION_PREFIX):
            age = name_age_s(base)
            if not (base < current or age is None or age > STALE_AFTER_S):
                continue
        try:
            final.rm(base)
        except Exception:  # garbage stays until the next publish; readers never see it
            pass
    final.invalidate()


def sweep_stale(folder: Location) -> None:
    """Remove entries of a staging folder older than :data:`STALE_AFTER_S` (killed writers)."""
    folder.invalidate()
    try:
        entries = folder.fs.ls(folder.path, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        base = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        age = name_age_s(base)
        if age is None and folder.is_local:
            try:
                age = time.time() - os.stat(entry["name"]).st_mtime
            except OSError:
                continue
        if age is not None and age > STALE_AFTER_S:
            try:
                folder.rm(base)
            except Exception:  # pragma: no cover - retried by the next writer
                pass
