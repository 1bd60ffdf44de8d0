"""cmsvd numerics: certified bounds, error-bounded clustering, metrics and baselines.

No Prefect and no file formats here. :mod:`pipeline.distributed` alone orchestrates Dask
tasks and reaches stored data through the ``storage`` package; see ``flows`` for Prefect.
"""

import importlib

# Loaded on first use (PEP 562), so that importing a light submodule such as
# pipeline.params (the CLI's option bounds) does not pull in scipy.
_EXPORTS = {
    "GramSketch": "bounds", "ResidualBound": "bounds", "WeylBound": "bounds", "make_bound": "bounds",
    "ClusteringResult": "greedy", "cluster": "greedy",
    "BlockLayout": "layout", "as_layout": "layout", "segment_sums": "layout",
    "adaptive_rank": "spectra", "relative_error": "spectra", "squared_singular_values": "spectra",
    "top_energy": "spectra",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


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
