"""Stream adapters for HDF5, MATLAB ``.mat`` (v5 and v7.3) and Zarr sources."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ._stream import NamedBlock


# ---- HDF5 --------------------------------------------------------------------


def _hdf5_stream(path: Path, dataset: str | None) -> Iterator[NamedBlock]:
    import h5py  # optional extra

    with h5py.File(path, "r") as f:
        node = f[dataset] if dataset else f
        if isinstance(node, h5py.Dataset):
            datasets = [node]
        else:
            found: list = []
            node.visititems(lambda _n, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
            datasets = found
        for ds in datasets:
            dname = ds.name.lstrip("/")
            if ds.ndim == 3:
                for i in range(ds.shape[0]):
                    yield f"{dname}[{i}]", ds[i], {"dataset": dname, "index": i}
            else:
                yield dname, ds, {"dataset": dname}  # sliced lazily by the writer


# ---- MATLAB ------------------------------------------------------------------


def mimo_block(channel: np.ndarray) -> np.ndarray:
    """Reshape one user's channel (NRB, Nr, Nt, Nc) to (Nr*Nt*Nc, NRB) (C order)."""
    if channel.ndim != 4:
        raise ValueError(f"MIMO layout expects (NRB, Nr, Nt, Nc), got shape {channel.shape}")
    return np.ascontiguousarray(np.moveaxis(channel, 0, -1)).reshape(-1, channel.shape[0])


def _mat_variables(path: Path, keys: Sequence[str] | None) -> Iterator[tuple[str, np.ndarray]]:
    import scipy.io

    try:
        available = [w[0] for w in scipy.io.whosmat(path)]
    except NotImplementedError:  # MATLAB v7.3 = HDF5
        yield from _mat73_variables(path, keys)
        return
    for key in keys or available:
        if key not in available:
            raise KeyError(f"{path}: no variable {key!r} (has {', '.join(available)})")
        yield key, scipy.io.loadmat(path, variable_names=[key])[key]


def _mat73_variables(path: Path, keys: Sequence[str] | None) -> Iterator[tuple[str, np.ndarray]]:
    import h5py

    with h5py.File(path, "r") as f:
        available = [k for k in f.keys() if not k.startswith("#") and isinstance(f[k], h5py.Dataset)]
        for key in keys or available:
            if key not in available:
                raise KeyError(f"{path}: no variable {key!r} (has {', '.join(available)})")
            raw = f[key][()]
            if raw.dtype.names and {"real", "imag"} <= set(raw.dtype.names):
                raw = raw["real"] + 1j * raw["imag"]
            yield key, np.asarray(raw).T  # HDF5 stores MATLAB arrays with axes reversed


def _mat_stream(path: Path, keys: Sequence[str] | None, layout: str | None) -> Iterator[NamedBlock]:
    for key, arr in _mat_variables(path, keys):
        if layout == "mimo":
            if arr.ndim == 4:
                yield key, mimo_block(arr), {"variable": key, "layout": "mimo"}
            elif arr.ndim == 5:
                for u in range(arr.shape[0]):
                    yield f"{key}[{u}]", mimo_block(arr[u]), {"variable": key, "user": u}
            else:
                raise ValueError(f"{path}: variable {key!r} has shape {arr.shape}; mimo needs 4-D or 5-D")
        elif arr.ndim == 3:
            for i in range(arr.shape[0]):
                yield f"{key}[{i}]", arr[i], {"variable": key, "index": i}
        else:
            yield key, arr, {"variable": key}
        del arr


# ---- Zarr --------------------------------------------------------------------


def _zarr_stream(arr: Any, label: str) -> Iterator[NamedBlock]:
    if arr.ndim == 2:
        yield label, arr, None
        return
    if arr.ndim != 3:
        raise ValueError(f"zarr array {label}: expected (K, m, n) or (m, n), got shape {arr.shape}")
    for i in range(arr.shape[0]):
        yield f"{label}[{i}]", arr[i], None
