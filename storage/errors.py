"""Exceptions raised by :mod:`storage`.

Every validation problem is a :class:`ValueError` subclass so callers can catch the
family at once; the message always names the offending item (block index and name,
stage and array, file).
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class for every error raised by :mod:`storage`."""


class InvalidNameError(StorageError, ValueError):
    """A collection, run, stage, label or array name is not a safe path component."""


class BlockValidationError(StorageError, ValueError):
    """A block failed validation (NaN/Inf, wrong rows, bad dtype, duplicate name...).

    Attributes
    ----------
    index : int
        Position of the block in the ingest stream (counting from the first appended
        block of this writer, or from the existing block count when appending).
    name : str or None
        The block's name, when known.
    problem : str
        What is wrong with it.
    """

    def __init__(self, index: int, name: str | None, problem: str) -> None:
        self.index = index
        self.name = name
        self.problem = problem
        label = f"block {index}" if name is None else f"block {index} ({name!r})"
        super().__init__(f"{label}: {problem}")


class EmptyInputError(StorageError, ValueError):
    """An ingest produced no block at all."""


class CollectionExistsError(StorageError, FileExistsError):
    """A published collection (or artifact) already exists and overwrite was not asked."""


class CollectionNotFoundError(StorageError, FileNotFoundError):
    """No published collection (or artifact) at the given URL and name."""


class RunNotFoundError(StorageError, FileNotFoundError):
    """No run of that id for the collection."""


class RunMismatchError(StorageError, ValueError):
    """A run id was reopened with different parameters or a different input."""


class IntegrityError(StorageError, ValueError):
    """Stored bytes do not match the hashes recorded when they were written."""


class CheckpointError(IntegrityError):
    """A run stage is missing, truncated or corrupted (never silently used)."""


class CorruptedFileError(IntegrityError):
    """A stored file is damaged: unreadable metadata, a checksum mismatch, a bad record.

    Attributes
    ----------
    path : str or None
        URL or path of the damaged file (or chunk object), when known.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class MissingChunkError(CorruptedFileError):
    """A chunk that must exist is absent: never read back as the Zarr fill value."""


class SourceFormatError(StorageError, ValueError):
    """An ingest source file is malformed or unsafe to read (bad header, bad offsets,
    over the memory budget); the message names the file and the problem."""


class RunLeaseError(StorageError, RuntimeError):
    """Another process holds the writer lease of a run (message names run and owner)."""


class LeaseLostError(RunLeaseError):
    """This process's lease expired or was taken over while it was still writing."""
