"""Chunk integrity: checksummed codecs, a store that refuses missing chunks, checked JSON.

Since schema 2 every Zarr array written by :mod:`storage` ends its codec chain with
``crc32c`` and is written with ``write_empty_chunks=True``, so every chunk inside the
array's extent exists.  Readers wrap the store in :class:`StrictStore`, which

- raises :class:`MissingChunkError` for an absent chunk (Zarr would return the fill value);
- checks the crc32c trailer itself, so the error names the chunk object (Zarr's own
  check would only say "checksum do not match", without saying where).

Small JSON records (commit records, manifests, run.json) carry a ``sha256`` of their
canonical form (:func:`seal` / :func:`unseal`), so a flipped byte that still parses is
caught too.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import google_crc32c
import numpy as np
from zarr.abc.store import ByteRequest
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import WrapperStore

from .errors import CorruptedFileError, MissingChunkError

#: Collections and artifacts at or above this schema are checksummed and complete.
CHECKSUMMED_SCHEMA = 2
#: Per-array runtime config: all-fill chunks are written too, so absence means damage.
ARRAY_CONFIG = {"write_empty_chunks": True}
SEAL_KEY = "sha256"
_CHUNK_KEY = re.compile(r"(^|/)c(/\d+)+$")


def checked_codecs() -> list:
    """Blosc + zstd (byte shuffle), then crc32c as the last bytes-to-bytes codec."""
    return [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"), Crc32cCodec()]


def is_chunk_key(key: str) -> bool:
    """True for a chunk object key of the default v3 encoding (``<array>/c/i/j``)."""
    return bool(_CHUNK_KEY.search(key))


def crc_ok(data: bytes | np.ndarray) -> bool:
    """Whether the last 4 bytes are the little-endian crc32c of the rest."""
    view = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if view.size < 4:
        return False
    return int(google_crc32c.value(view[:-4].tobytes())) == int.from_bytes(view[-4:].tobytes(), "little")


class StrictStore(WrapperStore):
    """Read-side store wrapper: a missing chunk is an error; crc32c checked per chunk.

    Parameters
    ----------
    store : zarr Store
        The wrapped store.
    label : str
        URL of the store root, used to name chunks in errors.
    checksummed : bool
        Verify the crc32c trailer of every whole-chunk read.
    expected : set of str, optional
        When given, only these chunk keys are required to exist (legacy artifacts,
        whose manifest lists every file); absent others read as the fill value.
    """

    def __init__(self, store: Any, label: str = "", checksummed: bool = True, expected: set[str] | None = None) -> None:
        super().__init__(store)
        self._label = label.rstrip("/")
        self._checksummed = checksummed
        self._expected = expected

    def _with_store(self, store: Any) -> "StrictStore":
        return type(self)(store, self._label, self._checksummed, self._expected)

    def __getstate__(self) -> dict:
        return dict(self.__dict__)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        buf = await self._store.get(key, prototype, byte_range)
        if not is_chunk_key(key):
            return buf
        where = f"{self._label}/{key}" if self._label else key
        if buf is None:
            if self._expected is not None and key not in self._expected:
                return None
            raise MissingChunkError(f"chunk {where} is missing", path=where)
        if self._checksummed and byte_range is None and not crc_ok(buf.as_numpy_array()):
            raise CorruptedFileError(f"chunk {where} is corrupted (crc32c checksum mismatch)", path=where)
        return buf


# ---- sealed JSON records ------------------------------------------------------------------


def _canonical(obj: Any) -> bytes:
    from ._location import json_dumps

    return json_dumps(obj).encode()


def seal(record: dict) -> dict:
    """Return *record* with ``sha256`` set to the hash of its canonical JSON (without it)."""
    body = {k: v for k, v in record.items() if k != SEAL_KEY}
    return {**body, SEAL_KEY: hashlib.sha256(_canonical(body)).hexdigest()}


def unseal(record: Any, where: str, *, required: bool = False) -> dict:
    """Check a sealed record; return it without the seal.

    Parameters
    ----------
    record : object
        Parsed JSON.
    where : str
        Name of the file, for the error message.
    required : bool
        Refuse a record without a seal (written by a version that sealed it).

    Raises
    ------
    CorruptedFileError
        Not a JSON object, seal missing when required, or seal mismatch.
    """
    if not isinstance(record, dict):
        raise CorruptedFileError(f"{where} is corrupted (not a JSON object)", path=where)
    body = {k: v for k, v in record.items() if k != SEAL_KEY}
    if SEAL_KEY not in record:
        # a seal key with one damaged byte must not pass for an unsealed legacy record
        near = [k for k in record if len(k) == len(SEAL_KEY) and sum(a != b for a, b in zip(k, SEAL_KEY)) == 1]
        if required or near:
            raise CorruptedFileError(f"{where} is corrupted (its sha256 seal is missing)", path=where)
        return body
    if record[SEAL_KEY] != hashlib.sha256(_canonical(body)).hexdigest():
        raise CorruptedFileError(f"{where} is corrupted (sha256 seal mismatch)", path=where)
    return body


def parse_json(data: bytes, where: str) -> Any:
    """``json.loads`` that names the file when the bytes are not valid UTF-8 JSON."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptedFileError(f"{where} is corrupted (not valid JSON: {exc})", path=where) from None


def chunk_keys(array: Any, stop: tuple[int, ...] | None = None) -> list[str]:
    """Store keys of every chunk of *array* (within ``stop`` per axis when given)."""
    import itertools

    shape = tuple(array.shape) if stop is None else stop
    grid = [range(-(-int(n) // int(c))) for n, c in zip(shape, array.chunks)]
    prefix = f"{array.path}/" if array.path else ""
    return [prefix + array.metadata.encode_chunk_key(idx) for idx in itertools.product(*grid)]
