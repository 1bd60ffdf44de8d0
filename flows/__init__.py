"""Prefect flows: thin orchestration over ``pipeline`` and ``storage``.

- ``flows.cluster.cluster``   (cmsvd-cluster): scan -> partition -> local -> merge rounds ->
  certify -> compress -> report, checkpointed per stage, resumable by run id;
- ``flows.cluster.compress``  (cmsvd-compress): finish an existing run from its id;
- ``flows.report.report``     (cmsvd-report): rewrite the report of a finished run;
- ``flows.ingest.ingest``     (cmsvd-ingest): a source file into a collection;
- ``flows.ingest.demo_data``  (cmsvd-demo-data): a synthetic collection.

Parameters are the pydantic models of ``flows.params``; deployments are defined in
``deploy/prefect.yaml`` and registered by ``python -m flows.deployments register``.
Run a flow locally with ``python -m flows <flow> '<json>'``; the ``cmsvd`` command line
is ``flows.cli``.  Submodules are imported lazily so that ``import flows`` stays cheap.
"""
