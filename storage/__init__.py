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
