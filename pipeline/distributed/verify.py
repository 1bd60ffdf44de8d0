"""Independent verification of a stored artifact against its collection.

Every group's relative error is recomputed from the stored data and the artifact's own
reconstruction (:meth:`storage.Artifact.decompress_range`), in scaled arithmetic
(:mod:`pipeline.magnitude`), and compared with eps and with the error the artifact
recorded when it was written. Nothing from the run that produced the artifact is trusted.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..layout import segment_sums
from ..magnitude import group_scaled_sums, residual_shifts, scale_blocks
from .tasks import import_storage

__all__ = ["verify_artifact", "READ_BYTES"]

READ_BYTES = 32 * 2**20  # collection data read per step


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
    offsets = np.asarray(collection.offsets)
    # per block: one magnitude shift for it and its reconstruction, and both squared norms there
    shifts = np.zeros(collection.n_blocks, dtype=np.int64)
    residual2, norm2 = np.zeros(collection.n_blocks), np.zeros(collection.n_blocks)
    for first, stop in collection.batches(READ_BYTES):
        base = int(offsets[first])
        data = np.asarray(collection.column_range(base, int(offsets[stop])), dtype=np.float64)
        approx = np.asarray(artifact.decompress_range(first, stop), dtype=np.float64)
        if approx.shape != data.shape:
            raise storage.CorruptedFileError(
                f"artifact {artifact.label!r}: blocks {first}..{stop - 1} decompress to {approx.shape}, "
                f"expected {data.shape}")
        local = offsets[first : stop + 1] - base
        shifts[first:stop] = residual_shifts(data, approx, local)
        data, approx = scale_blocks(data, local, shifts[first:stop]), scale_blocks(approx, local, shifts[first:stop])
        difference = data - approx
        residual2[first:stop] = segment_sums(np.einsum("ij,ij->j", difference, difference), local)
        norm2[first:stop] = segment_sums(np.einsum("ij,ij->j", data, data), local)
        if progress is not None:
            progress("verify", stop, collection.n_blocks)
    labels, n_groups = np.asarray(artifact.labels), artifact.n_groups
    group_residual2 = group_scaled_sums(residual2, shifts, labels, n_groups)[1]
    group_norm2 = group_scaled_sums(norm2, shifts, labels, n_groups)[1]
    errors = np.sqrt(np.divide(group_residual2, group_norm2, out=np.zeros(n_groups), where=group_norm2 > 0))
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
