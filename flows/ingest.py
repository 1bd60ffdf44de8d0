"""``cmsvd-ingest``: load a source file into a collection; ``cmsvd-demo-data``: a
synthetic collection to try the stack with."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from ._common import FLOW_OPTIONS, TASK_OPTIONS, artifact_key
from .params import DemoParameters, IngestParameters, validate_params

__all__ = ["ingest", "demo_data", "collection_summary"]


def collection_summary(collection: Any) -> dict[str, Any]:
    """JSON-ready facts about a collection (the ``collection`` part of report.json).

    Parameters
    ----------
    collection : storage.Collection
    """
    return {
        "name": collection.name,
        "url": collection.url,
        "blocks": int(collection.n_blocks),
        "rows": int(collection.rows),
        "columns": int(collection.n_columns),
        "dtype": str(collection.dtype),
        "bytes": int(collection.nbytes),
        "bytes_stored": int(collection.nbytes_stored),
        "fingerprint": collection.fingerprint(),
        "version": int(getattr(collection, "version", 1)),
        "appends": len(getattr(collection, "appends", [])),
    }


def _summary_markdown(title: str, summary: dict[str, Any]) -> str:
    rows = "\n".join(f"| {k} | {summary[k]} |" for k in ("name", "url", "blocks", "rows", "columns", "dtype", "bytes", "bytes_stored"))
    return f"# {title}\n\n| | |\n|---|---|\n{rows}\n"


@task(name="ingest-source", **TASK_OPTIONS)
def ingest_source(params: IngestParameters) -> dict[str, Any]:
    """Stream the source into a new collection, or append its blocks to one (atomic either
    way: nothing changes on failure)."""
    import storage

    collection = storage.ingest_path(params.store_url, params.collection, params.source, **params.ingest_options())
    return collection_summary(collection)


@flow(name="cmsvd-ingest", **FLOW_OPTIONS)
def ingest(params: IngestParameters) -> dict[str, Any]:
    """Ingest a file or folder into a cmsvd collection.

    Returns
    -------
    dict
        The collection summary (also published as a markdown artifact).
    """
    # validated here, not by Prefect: every bad field on one line, the allowed roots
    # (CMSVD_ALLOWED_ROOTS) checked in the worker, before the source is opened
    params = validate_params(IngestParameters, params, "cmsvd-ingest")
    summary = ingest_source(params)
    create_markdown_artifact(
        _summary_markdown(f"Collection `{params.collection}` ingested", summary),
        key=artifact_key("cmsvd", params.collection, "collection"),
        description=f"Collection {params.collection} after ingest from {params.source}",
    )
    verb = f"appended to (now version {summary['version']})" if params.append else "ingested into"
    print(f"{params.collection} {verb}: {summary['blocks']} blocks ({summary['rows']} x {summary['columns']})")
    return summary


@task(name="generate-demo", **TASK_OPTIONS)
def generate_demo(params: DemoParameters) -> dict[str, Any]:
    """Write a union-of-subspaces collection (``pipeline.synthetic``)."""
    import storage
    from pipeline.synthetic import union_of_subspaces

    layout, _ = union_of_subspaces(
        params.n_blocks,
        params.rows,
        params.width,
        blocks_per_subspace=params.blocks_per_subspace,
        subspace_rank=params.subspace_rank,
        noise=params.noise,
        seed=params.seed,
    )
    blocks = (layout.block(i) for i in range(params.n_blocks))
    collection = storage.ingest_blocks(
        params.store_url,
        params.collection,
        blocks,
        overwrite=params.overwrite,
        provenance={"generator": "pipeline.synthetic.union_of_subspaces", **params.model_dump(exclude={"store_url", "collection", "overwrite"})},
    )
    return collection_summary(collection)


@flow(name="cmsvd-demo-data", **FLOW_OPTIONS)
def demo_data(params: DemoParameters) -> dict[str, Any]:
    """Create a synthetic collection (blocks from a union of low-rank subspaces plus noise)."""
    params = validate_params(DemoParameters, params, "cmsvd-demo-data")  # before any work
    summary = generate_demo(params)
    create_markdown_artifact(
        _summary_markdown(f"Demo collection `{params.collection}`", summary),
        key=artifact_key("cmsvd", params.collection, "collection"),
        description=f"Synthetic collection {params.collection}",
    )
    return summary
