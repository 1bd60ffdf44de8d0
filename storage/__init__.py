"""Zarr matrix collections, ingest adapters, run checkpoints and compressed artifacts.

Layout under a root URL (local path, ``file://``, ``memory://``, ``s3://``)::

    <root>/<collection>/                    Zarr v3 group: data (m x N), offsets, norms2
    <root>/.staging/                        collections being written (never read)
    <root>/runs/<collection>/<run_id>/      run.json + one folder per stage (manifest last)
    <root>/artifacts/<collection>/<label>/  compressed artifact (manifest.json last)

Every public function takes ``storage_options`` (fsspec options); for S3 the
``CMSVD_S3_ENDPOINT`` environment variable sets the endpoint when none is given.
See :mod:`storage.collection`, :mod:`storage.ingest`, :mod:`storage.runs` and
:mod:`storage.artifact` for the atomicity and integrity rules.
"""

from .collection import (
    Collection,
    CollectionWriter,
    create_collection,
    default_chunks,
    delete_collection,
    list_collections,
    open_collection,
)
from .errors import (
    BlockValidationError,
    CheckpointError,
    CollectionExistsError,
    CollectionNotFoundError,
    CorruptedFileError,
    EmptyInputError,
    IntegrityError,
    InvalidNameError,
    LeaseLostError,
    MissingChunkError,
    RunLeaseError,
    RunMismatchError,
    RunNotFoundError,
    SourceFormatError,
    StorageError,
)
from .ingest import (
    ingest_blocks,
    ingest_hdf5,
    ingest_mat,
    ingest_npy_folder,
    ingest_npy_stack,
    ingest_npz,
    ingest_path,
    ingest_safetensors,
    ingest_zarr_array,
    mimo_block,
    read_safetensors_header,
)
from .lease import RunLease, check_lease, run_lease
from .runs import Run, open_run
from ._names import check_name, is_safe_name, short_repr
from .catalog import (
    list_artifacts,
    list_runs,
    read_run_bytes,
    read_run_json,
    read_run_record,
    run_url,
    write_run_file,
)
from .artifact import (
    Artifact,
    ArtifactWriter,
    create_artifact,
    open_artifact,
    open_artifact_writer,
    write_artifact,
)

__all__ = [
    # collections
    "Collection",
    "CollectionWriter",
    "create_collection",
    "default_chunks",
    "delete_collection",
    "list_collections",
    "open_collection",
    # ingest
    "ingest_blocks",
    "ingest_hdf5",
    "ingest_mat",
    "ingest_npy_folder",
    "ingest_npy_stack",
    "ingest_npz",
    "ingest_path",
    "ingest_safetensors",
    "ingest_zarr_array",
    "mimo_block",
    "read_safetensors_header",
    # runs and their leases
    "Run",
    "open_run",
    "RunLease",
    "check_lease",
    "run_lease",
    # artifacts
    "Artifact",
    "ArtifactWriter",
    "create_artifact",
    "open_artifact",
    "open_artifact_writer",
    "write_artifact",
    # errors
    "BlockValidationError",
    "CheckpointError",
    "CollectionExistsError",
    "CollectionNotFoundError",
    "CorruptedFileError",
    "EmptyInputError",
    "IntegrityError",
    "InvalidNameError",
    "LeaseLostError",
    "MissingChunkError",
    "RunLeaseError",
    "RunMismatchError",
    "RunNotFoundError",
    "SourceFormatError",
    "StorageError",
    # what a store holds for a collection
    "list_runs",
    "list_artifacts",
    "read_run_record",
    "read_run_json",
    "read_run_bytes",
    "run_url",
    # names
    "check_name",
    "is_safe_name",
    "short_repr",
    "write_run_file",
]
