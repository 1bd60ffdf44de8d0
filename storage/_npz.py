"""``.npz`` reading for ingest: members streamed one at a time, large ones spilled to a temporary file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ._stream import NamedBlock
from .errors import SourceFormatError

#: ``.npz`` members up to this many bytes are decompressed in memory; larger ones are
#: streamed to a temporary file and read a column slice at a time.
NPZ_MEMORY_BUDGET = 256 * 2**20
_COPY_STEP = 16 * 2**20


class _FileMatrix:
    """A read-only array stored raw in a file, read a slice at a time.

    Column slices ``[:, a:b]`` of a 2-D array (what the collection writer asks for) are
    read with plain file reads into a fresh buffer, so the resident set stays at the
    size of one slice (a memory map would fault in far more of the file around each
    row); any other selection maps the file for the copy only.
    """

    def __init__(self, path: str, shape: tuple[int, ...], dtype: np.dtype, fortran: bool) -> None:
        self.path, self.shape, self.dtype, self._order = path, tuple(shape), np.dtype(dtype), "F" if fortran else "C"
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        if (self.ndim == 2 and isinstance(key, tuple) and len(key) == 2 and key[0] == slice(None)
                and isinstance(key[1], slice) and key[1].step in (None, 1)):
            return self._columns(*key[1].indices(self.shape[1])[:2])
        mm = np.memmap(self.path, dtype=self.dtype, mode="r", shape=self.shape, order=self._order)
        try:
            return np.array(mm[key])
        finally:
            del mm

    def _columns(self, a: int, b: int) -> np.ndarray:
        m, n = self.shape
        b = max(a, b)
        item = self.dtype.itemsize
        out = np.empty((m, b - a), dtype=self.dtype, order=self._order)
        with open(self.path, "rb", buffering=0) as f:
            if self._order == "F":  # columns are contiguous: one read
                f.seek(a * m * item)
                f.readinto(memoryview(out.T).cast("B"))
            else:
                for r in range(m):
                    f.seek((r * n + a) * item)
                    f.readinto(memoryview(out[r]).cast("B"))
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)


def _npy_member_header(f: Any, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            shape, fortran, dtype = fmt._read_array_header(f, version)  # 3.0: utf-8 header
    except (ValueError, SyntaxError, TypeError, EOFError) as exc:
        raise SourceFormatError(f"{where}: not a valid .npy member ({exc})") from None
    if dtype.hasobject:
        raise SourceFormatError(f"{where}: object arrays are not supported (they need pickle)")
    return tuple(int(d) for d in shape), bool(fortran), dtype


def _npz_stream(path: Path, budget: int | None = None) -> Iterator[NamedBlock]:
    """Members one at a time: small ones in memory, large ones spilled to a temporary file.

    The declared shape is checked against the member's size before anything is
    allocated, so a lying header is an error, never a MemoryError.
    """
    import shutil
    import tempfile
    import zipfile

    budget = NPZ_MEMORY_BUDGET if budget is None else int(budget)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SourceFormatError(f"{path}: not a valid .npz archive ({exc})") from None
    with zf, tempfile.TemporaryDirectory(prefix="cmsvd-npz-") as tmp:
        for n, info in enumerate(zf.infolist()):
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename[: -len(".npy")]
            where = f"{path}: member {key!r}"
            with zf.open(info) as f:
                shape, fortran, dtype = _npy_member_header(f, where)
                nbytes = dtype.itemsize
                for d in shape:
                    nbytes *= d
                header = f.tell()
                if header + nbytes != info.file_size:
                    raise SourceFormatError(
                        f"{where}: declares shape {shape} {dtype} ({nbytes} bytes) but holds "
                        f"{info.file_size - header} bytes of data"
                    )
                if nbytes <= budget:
                    data = f.read(nbytes)
                    if len(data) != nbytes:
                        raise SourceFormatError(f"{where}: truncated ({len(data)} of {nbytes} bytes)")
                    block: Any = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
                else:
                    spill = os.path.join(tmp, f"{n}.bin")
                    with open(spill, "wb") as out:
                        copied = 0
                        while copied < nbytes:
                            chunk = f.read(min(_COPY_STEP, nbytes - copied))
                            if not chunk:
                                raise SourceFormatError(f"{where}: truncated ({copied} of {nbytes} bytes)")
                            out.write(chunk)
                            copied += len(chunk)
                    block = _FileMatrix(spill, shape, dtype, fortran)
            yield key, block, {"member": key}
            if isinstance(block, _FileMatrix):
                os.unlink(block.path)
            del block
        shutil.rmtree(tmp, ignore_errors=True)
