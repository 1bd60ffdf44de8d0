"""One parameter specification for a clustering run, validated once.

:class:`ClusteringParams` holds every parameter of a clustering run, sequential or
distributed, with a constraint table in the style of scikit-learn's
``_parameter_constraints``. The public entry points (:func:`pipeline.cluster`,
:class:`pipeline.distributed.ClusteringRun`), the Prefect parameter models and the CLI's
options all take their bounds and defaults from this table, and the run id of a
parameter set is computed from its normalised form here, in one place.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, ClassVar

from ._checks import CONSTRAINTS, DEFAULT_TOL, METHODS, ORDERS, Interval, Options

__all__ = ["Interval", "Options", "ClusteringParams", "GREEDY_FIELDS", "METHODS", "ORDERS", "DEFAULT_TOL",
           "DEFAULT_BATCH_BYTES", "CHECKPOINT_VERSION"]

DEFAULT_BATCH_BYTES = 32 * 2**20  # data per map task of the distributed stages

#: Version of the distributed stages' checkpoints: recorded with every distributed run and
#: part of its run id, so a run folder written by a cmsvd whose stages differ is never
#: resumed (its auto id differs, and an explicit id is refused as a parameter mismatch).
CHECKPOINT_VERSION = 4  # 4: local stages keep their last group's factors (refill); certify by Rayleigh-Ritz

#: The parameters of the sequential greedy (the distributed run adds the others).
GREEDY_FIELDS = ("rank", "eps", "method", "order", "patience", "oversampling", "tol")


@dataclass(frozen=True)
class ClusteringParams:
    """Every parameter of a clustering run, validated and normalised on construction.

    Parameters
    ----------
    rank : int
        Target rank r of each group's shared truncated SVD.
    eps : float
        Threshold in (0, 1) on every group's relative rank-r error.
    method : {"approximate", "residuals", "max_norm"}
        Certified bound used while a group grows (see :mod:`pipeline.bounds`).
    order : {"residual", "norm"}
        Candidate order of the greedy.
    oversampling : int
        Extra sketch directions p of ``method="approximate"``.
    patience : int
        Groups in a row that accept no candidate before the rest become single blocks.
    tol : float
        Relative threshold below which residual directions are dropped.
    shard_size, merge_neighbours, batch_bytes : int
        Distributed only: most blocks per shard, candidate partners per group in a merge
        bucket, data read per map task.

    Raises
    ------
    ValueError
        Naming the first parameter outside its constraint (:attr:`constraints`).
    """

    rank: int
    eps: float
    method: str = "approximate"
    order: str = "residual"
    oversampling: int = 5
    patience: int = 10
    tol: float = DEFAULT_TOL
    shard_size: int = 1000
    merge_neighbours: int = 8
    batch_bytes: int = DEFAULT_BATCH_BYTES

    #: The constraint of every parameter (:data:`pipeline._checks.CONSTRAINTS`).
    constraints: ClassVar[dict[str, Interval | Options]] = CONSTRAINTS

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, self.constraints[f.name].check(f.name, getattr(self, f.name)))

    #: Starting values front-ends offer for the two required parameters.
    suggested: ClassVar[dict[str, Any]] = {"rank": 10, "eps": 0.1}

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of parameter ``name`` (for rank and eps, which the library requires,
        the value front-ends suggest: :attr:`suggested`)."""
        field = next(f for f in fields(cls) if f.name == name)
        return cls.suggested[name] if field.default is MISSING else field.default

    def greedy_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`pipeline.cluster` (the sequential greedy)."""
        return {k: getattr(self, k) for k in GREEDY_FIELDS}

    def as_dict(self) -> dict[str, Any]:
        """Every parameter, normalised: what a run records and is fingerprinted by."""
        return asdict(self)

    def run_id(self, collection_fingerprint: str, mode: str = "distributed") -> str:
        """The run id of these parameters on a collection's contents: a hash of the
        normalised parameters the mode uses (the sequential mode ignores the
        distributed-only ones), so equal clusterings share one run folder and resume."""
        if mode not in ("distributed", "sequential"):
            raise ValueError(f"mode must be 'distributed' or 'sequential', got {mode!r}")
        params = self.as_dict() if mode == "distributed" else self.greedy_kwargs()
        if mode == "distributed":
            params = {**params, "checkpoint_version": CHECKPOINT_VERSION}
        payload = json.dumps({"input": collection_fingerprint, "mode": mode, "params": params}, sort_keys=True)
        prefix = "auto-" if mode == "distributed" else "seq-"
        return prefix + hashlib.sha256(payload.encode()).hexdigest()[:16]
