"""The outcome of a clustering run, sequential or distributed."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["DistributedResult"]


@dataclass
class DistributedResult:
    """Outcome of :func:`cluster_collection`.

    Attributes
    ----------
    groups : list of list of int
        Block indices per group.
    errors : ndarray
        Certified relative rank-r error per group, from the stored data: the exact error
        of the group's certified basis, so an upper bound on its exact rank-r error
        (equal to it for groups certified from their Gram).
    bounds : ndarray
        Certified sketch bound each group was formed under (0 for groups split at certify).
    ranks : ndarray
        Adaptive rank r_C per group (0 for a group stored as it is).
    stored_errors : ndarray
        Realised relative error of what the artifact stores, per group.
    compression_ratio, compression_ratio_adaptive : float
        The paper's ratio at fixed rank r, and with per-group ranks (arXiv 2601.11626;
        README, "Metrics").
    max_error : float
        Largest realised error of the stored artifact.
    timings : dict
        Seconds per stage (merge rounds summed under "merge").
    bytes_input, bytes_compressed : int
        Bytes on disk of the collection and of the compressed artifact.
    lineage : dict
        Empty for a full run. For an incremental run (:mod:`pipeline.distributed.update`):
        ``parent_run``, ``root_run`` (the last full run), ``depth``, ``blocks_added``,
        ``absorbed`` (new blocks that joined existing groups), ``groups_touched``,
        ``new_groups``, ``seconds``, ``seconds_saved`` (against the root's stage
        seconds), ``root_ratio``, and ``full_reason`` when a full run replaced it.
    """

    groups: list[list[int]]
    errors: np.ndarray
    bounds: np.ndarray
    ranks: np.ndarray
    stored_errors: np.ndarray
    compression_ratio: float
    compression_ratio_adaptive: float
    max_error: float
    timings: dict
    bytes_input: int
    bytes_compressed: int
    artifact_label: str
    run_id: str
    params: dict = field(default_factory=dict)
    lineage: dict = field(default_factory=dict)

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    @classmethod
    def assemble(cls, collection, groups: list[list[int]], *, errors, bounds, adaptive_ranks, stored_errors,
                 stored_ranks, timings: dict, bytes_compressed: int, artifact_label: str, run_id: str,
                 params: dict) -> "DistributedResult":
        """The result of a compressed run from its stage arrays (both modes), with the
        compression ratios computed from the groups and the stored ranks (0: raw)."""
        from ..metrics import adaptive_compression_ratio, compression_ratio

        stored_errors, stored_ranks = np.asarray(stored_errors), np.asarray(stored_ranks)
        return cls(
            groups=groups,
            errors=np.asarray(errors),
            bounds=np.asarray(bounds),
            ranks=np.asarray(adaptive_ranks),
            stored_errors=stored_errors,
            compression_ratio=compression_ratio(collection, groups, int(params["rank"])),
            compression_ratio_adaptive=adaptive_compression_ratio(
                collection, groups, np.where(stored_ranks == 0, collection.rows, stored_ranks)),
            max_error=float(stored_errors.max(initial=0.0)),
            timings=timings,
            bytes_input=int(collection.nbytes_stored),
            bytes_compressed=int(bytes_compressed),
            artifact_label=str(artifact_label),
            run_id=run_id,
            params=params,
        )
