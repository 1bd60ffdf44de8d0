"""Chunked Zarr v3 matrix collections: streaming writer, atomic append, reader.

Layout of one collection (a Zarr v3 group at ``<root>/<name>``)::

    data      (m, N) float32|float64, chunks (chunk_rows, chunk_columns), Blosc-zstd
    offsets   (K+1,) int64   block i is data[:, offsets[i]:offsets[i+1]]
    norms2    (K,)   float64 squared Frobenius norm of each block, computed in float64 on
                     2^-s A at the block's magnitude shift s (pipeline.magnitude; s = 0,
                     the plain norm, unless the block's largest entry is below 2^-401
                     or at least 2^399), so that it never under- or overflows
    attrs["cmsvd"] = {schema_version, kind, rows, dtype, n_blocks, n_columns, names,
                      block_provenance, provenance}

``attrs["cmsvd"]`` (the group's root ``zarr.json``) is the *commit record*: readers only
trust ``offsets[:n_blocks+1]``, ``norms2[:n_blocks]`` and ``data[:, :n_columns]``.
This is what makes appends atomic: an append writes its new columns beyond the
committed extent (the chunk shared with the old tail is rewritten with the old values
unchanged, and each chunk write replaces one object atomically), then the new
``offsets``/``norms2`` entries (beyond the committed ones), and finally rewrites the
root ``zarr.json`` in a single object write.  A failure before that last write leaves
the collection exactly as it was; the writer then shrinks ``data`` back to the
committed extent (best effort, and harmless if it cannot).

New collections are written under ``<root>/.staging/`` and renamed into place on local
disk (an overwrite swaps directories atomically).  On object stores the group lives in a
version prefix ``<root>/<name>/v-<time>-<hex>/`` and ``<root>/<name>/current.json``
points at it; an ingest writes a fresh version and switches the pointer last, then
removes older versions.  A failed or killed ingest therefore leaves the old collection
(or nothing) visible, never a mixture; its leftovers are removed by later writers.

Integrity (schema 2): every array ends its codec chain with crc32c and every chunk is
written, reads go through :class:`storage._integrity.StrictStore` (a missing chunk or a
checksum mismatch raises an error naming the chunk and the blocks it holds), and the
commit record carries a sha256 seal.  Stores written before schema 2 still open, without
these checks.

Writers assume a single writer per collection; readers may run concurrently.
"""


# The code lives in three private modules; this module is the public face and keeps
# every name it has always had (including the helpers other modules import).
from pipeline.magnitude import add_scaled_norm2, scaled_norm2  # noqa: F401

from ._collection_format import (  # noqa: F401
    _META_KEY,
    _PASSTHROUGH_CHUNK,
    _SUPPORTED_DTYPES,
    _VECTOR_CHUNK,
    MAX_READ_BYTES,
    MIN_CHUNK_COLUMNS,
    TARGET_CHUNK_BYTES,
    _array_signature,
    _ColumnSink,
    default_chunks,
    default_codecs,
)
from ._collection_reader import (  # noqa: F401
    Collection,
    _current,
    delete_collection,
    list_collections,
    open_collection,
    read_passthrough,
)
from ._collection_writer import (  # noqa: F401
    CollectionWriter,
    _check_dtype,
    _is_published,
    _now,
    _target_dtype,
    create_collection,
)
from ._integrity import (  # noqa: F401
    ARRAY_CONFIG,
    CHECKSUMMED_SCHEMA,
    StrictStore,
    checked_codecs,
    parse_json,
    seal,
    unseal,
)
from ._location import SCHEMA_VERSION, Location, json_dumps, resolve  # noqa: F401
from ._names import block_name_problem, check_name, short_repr  # noqa: F401
from ._publish import (  # noqa: F401
    POINTER,
    collect_versions,
    new_version_name,
    publish_local,
    read_pointer,
    sweep_stale,
    switch_pointer,
)
from .errors import (  # noqa: F401
    BlockValidationError,
    CollectionExistsError,
    CollectionNotFoundError,
    CorruptedFileError,
    EmptyInputError,
    MissingChunkError,
)
