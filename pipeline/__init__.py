"""cmsvd numerics: certified bounds, error-bounded clustering, metrics and baselines.

No Prefect and no file formats here. :mod:`pipeline.distributed` alone orchestrates Dask
tasks and reaches stored data through the ``storage`` package; see ``flows`` for Prefect.
"""

from .bounds import GramSketch, ResidualBound, WeylBound, make_bound
from .greedy import ClusteringResult, cluster
from .layout import BlockLayout, as_layout, segment_sums
from .spectra import adaptive_rank, relative_error, squared_singular_values, top_energy

__all__ = [
    "cluster",
    "ClusteringResult",
    "WeylBound",
    "ResidualBound",
    "GramSketch",
    "make_bound",
    "BlockLayout",
    "as_layout",
    "segment_sums",
    "relative_error",
    "squared_singular_values",
    "top_energy",
    "adaptive_rank",
]
