"""The ``cmsvd demo`` collection and store.

The demo generates a union-of-subspaces collection (``pipeline.synthetic``) through the
``cmsvd-demo-data`` flow: K blocks of m x n, each drawn from one of K / 100 random rank-3
subspaces with a log-normal scale and 2% Gaussian noise, shuffled so that subspace
members are not adjacent.  It is the situation cmsvd is for: many small matrices, hidden
shared structure, and a user who wants one basis per group with a guaranteed error.

With the defaults (20,000 blocks of 256 x 4, float64) the collection is 164 MB raw.
A second ``cmsvd demo`` with the same size reuses the generated collection and the
checkpointed stages (the run id is derived from the contents and the parameters).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

__all__ = ["DEMO_COLLECTION", "DEMO_GENERATOR", "demo_ingest_params", "prepare_demo_store"]

DEMO_COLLECTION = "demo"
#: Fixed generator settings of the demo (the size is a command-line choice).
DEMO_GENERATOR = {"blocks_per_subspace": 100, "subspace_rank": 3, "noise": 0.02, "seed": 0}


def prepare_demo_store(store: str, *, fresh: bool = False) -> str:
    """Create the demo store folder (local paths); with ``fresh`` drop the demo collection,
    its runs and artifacts (nothing else in the store is touched).  Returns a display path."""
    if "://" in store:
        if fresh:
            import storage

            try:
                storage.delete_collection(store, DEMO_COLLECTION)
            except Exception:  # noqa: BLE001 - absent is fine
                pass
        return store
    root = Path(store).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(str(root))
    root.mkdir(parents=True, exist_ok=True)
    if fresh:
        for sub in (root / DEMO_COLLECTION, root / "runs" / DEMO_COLLECTION, root / "artifacts" / DEMO_COLLECTION):
            if sub.exists():
                shutil.rmtree(sub)
    return str(root)


def demo_ingest_params(store: str, *, blocks: int, rows: int, width: int, fresh: bool = False) -> dict[str, Any] | None:
    """Fields of ``flows.params.DemoParameters`` (without the store and name) to generate
    the demo collection, or None when the store already holds exactly that collection."""
    wanted = {"n_blocks": int(blocks), "rows": int(rows), "width": int(width), **DEMO_GENERATOR}
    if not fresh:
        import storage

        try:
            coll = storage.open_collection(store, DEMO_COLLECTION)
        except (storage.CollectionNotFoundError, FileNotFoundError):
            coll = None
        if coll is not None:
            prov = coll.provenance
            if all(prov.get(k) == v for k, v in wanted.items()) and coll.n_blocks == blocks:
                return None
    return {**wanted, "overwrite": True}
