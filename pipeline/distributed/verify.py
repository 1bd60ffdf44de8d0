"""Independent verification of a stored artifact against its collection.

Every group's relative error is recomputed from the stored data and the artifact's own
reconstruction (:meth:`storage.Artifact.decompress_range`), in scaled arithmetic
(:mod:`pipeline.magnitude`), and compared with eps and with the error the artifact
recorded when it was written. Nothing from the run that produced the artifact is trusted.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..magnitude import add_scaled_norm2, residual_norm2, scaled_ratio
from .tasks import import_storage

__all__ = ["verify_artifact", "READ_BYTES"]

READ_BYTES = 32 * 2**20  # collection data read per step


def _batches(collection, budget: int):
    """(first, stop) block ranges of about ``budget`` bytes of data each."""
    offsets, per_column = collection.offsets, collection.rows * np.dtype(collection.dtype).itemsize
    first = 0
    while first < collection.n_blocks:
        stop = first + 1
        while stop < collection.n_blocks and (offsets[stop + 1] - offsets[first]) * per_column <= budget:
            stop += 1
        yield first, stop
        first = stop


def verify_artifact(collection, artifact, eps: float | None = None,
                    progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Recompute every group's relative error from the collection and the artifact.

    Parameters
    ----------
    collection : storage.Collection
    artifact : storage.Artifact
        An artifact of ``collection`` (its hashes are checked first).
    eps : float, optional
        Threshold to check against; default the eps the artifact was written for.
    progress : callable(stage, done, total), optional
        Called as ``("verify", blocks done, blocks)``.

    Returns
    -------
    dict
        ``ok`` (no violation, no mismatch), ``hashes_ok``, ``eps``, ``max_error``,
        ``violations`` (groups above eps, beyond a rounding tolerance of the artifact's
        dtype), ``mismatches`` (groups whose recorded error differs from the recomputed
        one), per-group ``errors``, and the collection, artifact, group and block counts.

    Raises
    ------
    storage.IntegrityError
        A hash mismatch, an artifact written for other contents of the collection, or a
        block that decompresses to the wrong shape (:class:`storage.CorruptedFileError`).
    """
    storage = import_storage()
    artifact.verify()
    if artifact.meta.get("collection_fingerprint") != collection.fingerprint():
        raise storage.CorruptedFileError(
            f"artifact {artifact.label!r} was written for other contents of collection {collection.name!r} "
            "(the collection changed since); recompress it")
    eps = float(eps if eps is not None else artifact.params.get("eps"))
    dtype = np.dtype(artifact.dtype)
    # squared norms as (magnitude shift, value) pairs: no under- or overflow at any scale
    residual2: list = [(None, 0.0)] * artifact.n_groups
    norm2: list = [(None, 0.0)] * artifact.n_groups
    offsets, labels = collection.offsets, np.asarray(artifact.labels)
    for first, stop in _batches(collection, READ_BYTES):
        base = int(offsets[first])
        data = collection.column_range(base, int(offsets[stop]))
        approx = artifact.decompress_range(first, stop)
        if approx.shape != data.shape:
            raise storage.CorruptedFileError(
                f"artifact {artifact.label!r}: blocks {first}..{stop - 1} decompress to {approx.shape}, "
                f"expected {data.shape}")
        for i in range(first, stop):
            columns = slice(int(offsets[i]) - base, int(offsets[i + 1]) - base)
            block_residual2, block_norm2 = residual_norm2(data[:, columns], approx[:, columns])
            g = int(labels[i])
            residual2[g] = add_scaled_norm2(residual2[g], block_residual2)
            norm2[g] = add_scaled_norm2(norm2[g], block_norm2)
        if progress is not None:
            progress("verify", stop, collection.n_blocks)
    errors = np.sqrt([scaled_ratio(r, n) for r, n in zip(residual2, norm2)])
    # the stored numbers are rounded to the artifact's dtype: a float32 artifact may sit
    # above eps by its rounding, which this tolerance allows and no more
    slack = 10 * float(np.finfo(dtype).eps) ** 0.5 if dtype == np.float32 else 1e-9
    violations = [int(g) for g in np.flatnonzero(errors > eps * (1 + 1e-9) + slack)]
    recorded = np.asarray(artifact.errors, dtype=np.float64)
    tol = 1e-3 if dtype == np.float32 else 1e-6
    mismatches = [int(g) for g in np.flatnonzero(np.abs(errors - recorded) > tol * np.maximum(recorded, 1e-3))]
    return {
        "collection": collection.name,
        "artifact": artifact.label,
        "ok": not violations and not mismatches,
        "hashes_ok": True,
        "eps": eps,
        "groups": int(artifact.n_groups),
        "blocks": int(artifact.n_blocks),
        "max_error": float(errors.max(initial=0.0)),
        "violations": violations,
        "mismatches": mismatches,
        "errors": errors.tolist(),
    }
