"""Prefect flows: thin orchestration over ``pipeline`` and ``storage``.

- ``flows.cluster.cluster``   (cmsvd-cluster): scan -> partition -> local -> merge rounds ->
  certify -> compress -> report, checkpointed per stage, resumable by run id;
- ``flows.cluster.compress``  (cmsvd-compress): finish an existing run from its id;
- ``flows.report.report``     (cmsvd-report): rewrite the report of a finished run;
- ``flows.ingest.ingest``     (cmsvd-ingest): a source file into a collection;
- ``flows.ingest.demo_data``  (cmsvd-demo-data): a synthetic collection.

Words: a *run* is one clustering of a collection with given parameters, named by its run
id, with its run folder ``runs/<collection>/<run_id>/`` in the store (``storage.Run``;
``pipeline.distributed.ClusteringRun`` computes its stages); a *flow run* is one execution
of a Prefect flow; ``cmsvd run`` is the command that runs these flows in-process.

Parameters are the pydantic models of ``flows.params``; deployments are defined in
``deploy/prefect.yaml`` and registered by ``python -m flows.deployments register``.
Run a flow locally with ``python -m flows <flow> '<json>'``; the ``cmsvd`` command line
is ``flows.cli``.  Submodules are imported lazily so that ``import flows`` stays cheap.
"""
