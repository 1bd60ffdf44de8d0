"""Shared fixtures for the storage tests."""

from __future__ import annotations

import uuid

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def root(tmp_path) -> str:
    """A local root URL for collections."""
    return str(tmp_path / "store")


@pytest.fixture
def mem_root():
    """A fresh memory:// root, removed afterwards (the memory filesystem is process-wide)."""
    import fsspec

    url = f"memory://cmsvd-test-{uuid.uuid4().hex}"
    yield url
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url, recursive=True)


@pytest.fixture
def make_blocks(rng):
    """Factory of random blocks with given widths."""

    def make(m: int, widths, dtype=np.float64) -> list[np.ndarray]:
        return [rng.standard_normal((m, int(w))).astype(dtype) for w in widths]

    return make
