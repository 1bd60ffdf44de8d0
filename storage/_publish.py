"""Publishing: putting a staged collection or artifact in place so that readers see the old
version or the new one, whole.

Local disk: the staged directory is renamed into place (atomic); an overwrite swaps the two
directories with renameat2(RENAME_EXCHANGE), so the name never points at nothing.
Object stores have no rename: each publish writes a fresh version prefix
``<final>/v-<UTC time>-<hex>/`` and then switches a small pointer object; older versions
are garbage-collected afterwards.  At every moment the old version or the new one is whole.
"""

from __future__ import annotations

import datetime as _dt
import errno
import os
import re
import shutil
import time
import uuid

from ._location import Location, json_dumps, write_temp_file

POINTER = "current.json"
VERSION_PREFIX = "v-"
#: Unreferenced staging folders and versions older than this are removed by later writers.
STALE_AFTER_S = 24 * 3600.0
_VERSION_RE = re.compile(r"(?:^|-)(\d{8}T\d{6})(?:\.\d{6})?-[0-9a-f]{8,}$")


def new_version_name(prefix: str = VERSION_PREFIX) -> str:
    """A fresh, time-ordered version or staging name: ``<prefix><UTC time>.<µs>-<hex>``."""
    # microseconds: names of one writer after another sort in time order
    now = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S.%f")
    return f"{prefix}{now}-{uuid.uuid4().hex[:12]}"


def name_age_s(name: str) -> float | None:
    """Seconds since the time embedded in a version/staging name (None without one)."""
    m = _VERSION_RE.search(name)
    if not m:
        return None
    t = _dt.datetime.strptime(m.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=_dt.UTC)
    return (_dt.datetime.now(_dt.UTC) - t).total_seconds()


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
        tmp = write_temp_file(target.path, data)
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
