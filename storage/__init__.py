"""Zarr matrix collections, ingest adapters, run checkpoints and compressed artifacts."""

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
    EmptyInputError,
    IntegrityError,
    InvalidNameError,
    RunMismatchError,
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
from .runs import Run, open_run
from .artifact import (
    Artifact,
    ArtifactWriter,
    create_artifact,
    open_artifact,
    open_artifact_writer,
    write_artifact,
)

import types as _types

__all__ = sorted(n for n, v in globals().items() if not n.startswith("_") and not isinstance(v, _types.ModuleType))
