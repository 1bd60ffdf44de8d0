"""Storage format of a collection: chunk sizes, codecs, the column sink, array signatures.

Shared by the writer (:mod:`storage._collection_writer`) and the reader
(:mod:`storage._collection_reader`); see :mod:`storage.collection` for the layout.
"""

from __future__ import annotations

import hashlib

import numpy as np
import zarr

from ._integrity import checked_codecs
from ._location import json_dumps

#: Target size of one stored chunk; a chunk is also the writer's buffer.
TARGET_CHUNK_BYTES = 16 * 2**20
#: Below this many columns per chunk at full height, rows are chunked too.
MIN_CHUNK_COLUMNS = 64
#: Upper bound on the bytes fetched by one read of consecutive chunks in ``blocks``.
MAX_READ_BYTES = 64 * 2**20
_META_KEY = "cmsvd"
_VECTOR_CHUNK = 65536
_SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: Bytes per chunk of the ``passthrough`` array (items kept as they are, see
#: :meth:`CollectionWriter.add_passthrough`).
_PASSTHROUGH_CHUNK = 4 * 2**20


def default_codecs() -> list:
    """Blosc + zstd with byte shuffle (multi-threaded, good on floats), then crc32c."""
    return checked_codecs()


def default_chunks(
    rows: int, dtype: np.dtype, chunk_columns: int | None = None, chunk_rows: int | None = None
) -> tuple[int, int]:
    """Pick (chunk_rows, chunk_columns) for ``data``.

    Chunks hold about :data:`TARGET_CHUNK_BYTES`; rows are split only when a full-height
    chunk would have fewer than :data:`MIN_CHUNK_COLUMNS` columns (very tall blocks).
    Chunk boundaries need not align with blocks.
    """
    itemsize = np.dtype(dtype).itemsize
    if chunk_rows is None:
        fits = rows * itemsize * MIN_CHUNK_COLUMNS <= TARGET_CHUNK_BYTES
        chunk_rows = rows if fits else max(1, TARGET_CHUNK_BYTES // (itemsize * MIN_CHUNK_COLUMNS))
    chunk_rows = int(min(max(1, chunk_rows), max(rows, 1)))
    if chunk_columns is None:
        chunk_columns = max(1, TARGET_CHUNK_BYTES // (chunk_rows * itemsize))
        if chunk_columns >= 256:
            chunk_columns -= chunk_columns % 256  # round figures read better in listings
    return chunk_rows, int(max(1, chunk_columns))



class _ColumnSink:
    """Sequential writer along the last axis of a Zarr array, one chunk buffered.

    Starts at column *start* (possibly inside a chunk: the chunk's existing head is
    loaded so that rewriting it keeps the old values).  Memory: one chunk.
    """

    def __init__(self, array: zarr.Array, start: int, head: np.ndarray | None = None) -> None:
        self.array = array
        self.cc = int(array.chunks[-1])
        self.buf_start = (start // self.cc) * self.cc
        self.fill = start - self.buf_start
        self.pos = start
        self.buf = np.zeros(array.shape[:-1] + (self.cc,), dtype=array.dtype)
        if self.fill:
            # *head* comes from a checked read: rewriting an unverified chunk would give
            # damaged values a fresh, valid checksum
            self.buf[..., : self.fill] = array[..., self.buf_start : start] if head is None else head

    def _ensure(self, stop: int) -> None:
        if self.array.shape[-1] < stop:
            self.array.resize(self.array.shape[:-1] + (stop,))

    def write(self, piece: np.ndarray) -> None:
        w = piece.shape[-1]
        done = 0
        while done < w:
            if self.fill == 0 and w - done >= self.cc:
                # whole chunks go straight to the store, no extra copy
                k = (w - done) // self.cc * self.cc
                self._ensure(self.buf_start + k)
                self.array[..., self.buf_start : self.buf_start + k] = piece[..., done : done + k]
                self.buf_start += k
                done += k
                continue
            take = min(self.cc - self.fill, w - done)
            self.buf[..., self.fill : self.fill + take] = piece[..., done : done + take]
            self.fill += take
            done += take
            if self.fill == self.cc:
                self._flush()
        self.pos += w

    def _flush(self) -> None:
        stop = self.buf_start + self.fill
        self._ensure(stop)
        self.array[..., self.buf_start : stop] = self.buf[..., : self.fill]
        if self.fill == self.cc:
            self.buf_start += self.cc
            self.fill = 0

    def close(self) -> int:
        """Write the partial last chunk, trim the array to the written extent."""
        if self.fill:
            self._flush()
        if self.array.shape[-1] != self.pos:
            self.array.resize(self.array.shape[:-1] + (self.pos,))
        self.buf = np.zeros((0,))
        return self.pos


def _array_signature(arr: zarr.Array) -> str:
    """sha256 of an array's metadata except its shape (which appends change)."""
    md = {k: v for k, v in arr.metadata.to_dict().items() if k not in ("shape", "attributes")}
    return hashlib.sha256(json_dumps(md).encode()).hexdigest()
