"""Flow parameters as pydantic models.

Prefect turns these models into the deployment's OpenAPI parameter schema, so the
dashboard renders a form with descriptions and bounds, and a deployment with
``enforce_parameter_schema`` rejects a bad value (eps = 1.5, rank = 0, an unknown
method...) when the run is *created*, before any worker picks it up.  The same
models validate parameters again when the flow starts (``validate_parameters``).

``extra="forbid"`` everywhere: a misspelt field is an error, not a silently ignored
default.
"""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "NAME_PATTERN",
    "Method",
    "Order",
    "DType",
    "StoreParameters",
    "ClusterParameters",
    "IngestParameters",
    "RunParameters",
    "DemoParameters",
]

#: Same rule as ``storage`` applies to collection and run names (one safe path part).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$"


class Method(str, enum.Enum):
    """Lower bound used to certify a group's error while it grows (DESIGN.md section 2)."""

    approximate = "approximate"
    residuals = "residuals"
    max_norm = "max_norm"


class Order(str, enum.Enum):
    """Order in which candidate blocks are offered to a growing group."""

    residual = "residual"
    norm = "norm"


class DType(str, enum.Enum):
    """Storage dtype of a collection."""

    float32 = "float32"
    float64 = "float64"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=False)


class StoreParameters(_Model):
    """Where a collection lives."""

    store_url: str = Field(
        min_length=1,
        description=(
            "Root URL of the store: a local path, file://, memory:// or s3://bucket/prefix "
            "(S3 endpoint from CMSVD_S3_ENDPOINT, credentials from the usual AWS variables)."
        ),
    )
    collection: str = Field(
        pattern=NAME_PATTERN,
        description="Collection name under the store root (1-128 characters from [A-Za-z0-9._-]).",
    )


def _scheduler_field() -> Any:
    return Field(
        default=None,
        description=(
            "Dask scheduler, e.g. tcp://dask-scheduler:8786. Empty: the CMSVD_DASK_SCHEDULER "
            "or DASK_SCHEDULER_ADDRESS environment variable, else a LocalCluster on 127.0.0.1."
        ),
    )


class ClusterParameters(StoreParameters):
    """Parameters of the ``cmsvd-cluster`` flow (and ``cmsvd-compress``)."""

    rank: int = Field(default=10, ge=1, le=100_000, description="Shared basis rank r of every group.")
    eps: float = Field(
        default=0.1,
        gt=0.0,
        lt=1.0,
        description="Certified bound on every group's relative rank-r error, in (0, 1).",
    )
    method: Method = Field(default=Method.approximate, description="Certified lower bound used while groups grow.")
    order: Order = Field(default=Order.residual, description="Candidate order: residual against the seed basis, or norm.")
    oversampling: int = Field(
        default=5, ge=0, le=1000, description="Extra sketch directions p for method=approximate (sketch rank r + p)."
    )
    patience: int = Field(
        default=10,
        ge=0,
        le=1_000_000,
        description="Groups in a row without any accepted candidate before the rest become singletons.",
    )
    shard_size: int = Field(
        default=4000,
        ge=2,
        le=1_000_000,
        description="Most blocks per shard of the local stage (the local greedy costs about shard_size^2 per shard).",
    )
    merge_neighbours: int = Field(default=8, ge=1, le=1000, description="Candidate partners per group in a merge round.")
    run_id: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description=(
            "Run folder name under runs/<collection>/. Re-running with the same id resumes after the "
            "last completed stage. Empty: derived from the collection contents and the parameters, "
            "so an interrupted run resumes when started again with the same values."
        ),
    )
    scheduler_address: str | None = _scheduler_field()

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``pipeline.distributed.ClusteringRun`` (numerics only)."""
        return {
            "rank": self.rank,
            "eps": self.eps,
            "method": self.method.value,
            "order": self.order.value,
            "oversampling": self.oversampling,
            "patience": self.patience,
            "shard_size": self.shard_size,
            "merge_neighbours": self.merge_neighbours,
        }


class RunParameters(StoreParameters):
    """An existing run, for the ``cmsvd-compress`` and ``cmsvd-report`` flows.

    The clustering parameters are read back from the run's ``run.json``.
    """

    run_id: str = Field(pattern=NAME_PATTERN, description="Run folder name under runs/<collection>/.")
    scheduler_address: str | None = _scheduler_field()


class IngestParameters(StoreParameters):
    """Parameters of the ``cmsvd-ingest`` flow (see ``storage.ingest_path``)."""

    source: str = Field(
        min_length=1,
        description=(
            "File or folder to ingest: .npy stack, .npz, folder of .npy, .safetensors, .h5/.hdf5, "
            ".mat, or a Zarr array (local path or URL)."
        ),
    )
    dtype: DType | None = Field(default=None, description="Storage dtype; empty: float32 for float32 input, else float64.")
    overwrite: bool = Field(default=False, description="Replace an existing collection of the same name.")
    stack_complex: bool = Field(default=False, description="Store complex blocks as real rows over imaginary rows.")
    column_length: int | None = Field(default=None, ge=1, description="safetensors: rows of every column block.")
    per: str | None = Field(default=None, description="safetensors: block granularity (see storage.ingest_safetensors).")
    dataset: str | None = Field(default=None, description="HDF5: dataset path inside the file.")
    key: str | None = Field(default=None, description="MATLAB: variable name.")
    layout: str | None = Field(default=None, description="MATLAB: layout of the variable (see storage.ingest_mat).")

    def ingest_options(self) -> dict[str, Any]:
        """Options for ``storage.ingest_path``: only the ones that were given."""
        opts: dict[str, Any] = {"overwrite": self.overwrite}
        if self.stack_complex:
            opts["stack_complex"] = True
        if self.dtype is not None:
            opts["dtype"] = self.dtype.value
        for name in ("column_length", "per", "dataset", "key", "layout"):
            value = getattr(self, name)
            if value is not None:
                opts[name] = value
        return opts


class DemoParameters(StoreParameters):
    """Parameters of the ``cmsvd-demo-data`` flow: a synthetic union-of-subspaces collection."""

    n_blocks: int = Field(default=400, ge=1, le=10_000_000, description="Number of blocks.")
    rows: int = Field(default=128, ge=1, le=1_000_000, description="Rows m of every block.")
    width: int = Field(default=4, ge=1, le=100_000, description="Columns of every block.")
    blocks_per_subspace: int = Field(default=100, ge=1, description="Blocks drawn from each random subspace.")
    subspace_rank: int = Field(default=3, ge=1, description="Dimension of each subspace.")
    noise: float = Field(default=0.02, ge=0.0, le=10.0, description="Noise level relative to the signal.")
    seed: int = Field(default=0, ge=0, description="Random seed.")
    overwrite: bool = Field(default=False, description="Replace an existing collection of the same name.")
