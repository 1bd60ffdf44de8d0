"""Bounded BLAS threads for small dense linear algebra in the calling process.

The greedy and the client side of the distributed driver make many small LAPACK calls
(eigen-solves of (r + p)-sized matrices, SVDs of narrow residuals). Under a multithreaded
OpenBLAS each such call pays thread start-up and synchronisation that dwarf its work, and
when Dask workers keep the other cores busy the threads also oversubscribe them: a 42 x 42
``eigh`` measured 43 ms instead of 1.4 ms. Dask limits BLAS threads on its workers, not in
the client, so the numerics here do it themselves with :mod:`threadpoolctl`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import TypeVar

from threadpoolctl import ThreadpoolController

__all__ = ["single_threaded_blas", "with_single_threaded_blas"]

F = TypeVar("F", bound=Callable)


@functools.lru_cache(maxsize=1)
def _controller() -> ThreadpoolController:
    """One controller per process: finding the loaded BLAS libraries costs about 0.7 ms,
    which a call of the greedy on a small collection would pay every time. numpy's and
    scipy's BLAS are loaded with ``pipeline`` (which imports both), before the first use."""
    return ThreadpoolController()


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run the enclosed block with one BLAS thread, restoring the previous limits after."""
    with _controller().limit(limits=1, user_api="blas"):
        yield


def with_single_threaded_blas(func: F) -> F:
    """Decorator form of :func:`single_threaded_blas`."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with single_threaded_blas():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
