"""Parameter models and the schema the dashboard validates against (no server needed)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from flows.params import ClusterParameters, IngestParameters, Method, Order, RunParameters

GOOD = {"store_url": "s3://cmsvd/store", "collection": "demo"}


def _schema(flow):
    from prefect.utilities.callables import parameter_schema

    return parameter_schema(flow).model_dump_for_openapi()


def _server_accepts(flow, params: dict) -> bool:
    """What the Prefect server does on create_flow_run with enforce_parameter_schema."""
    from prefect.utilities.schema_tools import ValidationError as SchemaError
    from prefect.utilities.schema_tools import validate

    try:
        validate({"params": params}, _schema(flow), raise_on_error=True)
    except SchemaError:
        return False
    return True


def test_defaults_and_pipeline_kwargs():
    p = ClusterParameters(**GOOD)
    assert (p.rank, p.eps, p.method, p.order, p.oversampling, p.patience) == (10, 0.1, Method.approximate, Order.residual, 5, 10)
    kwargs = p.pipeline_kwargs()
    assert kwargs["method"] == "approximate" and kwargs["order"] == "residual"
    assert p.run_id is None and p.scheduler_address is None


@pytest.mark.parametrize(
    "bad",
    [
        {"eps": 0.0},
        {"eps": 1.0},
        {"eps": 1.5},
        {"eps": -0.1},
        {"rank": 0},
        {"method": "svd"},
        {"order": "random"},
        {"oversampling": -1},
        {"collection": "../etc"},
        {"collection": ""},
        {"run_id": "a/b"},
        {"store_url": ""},
        {"epsilon": 0.1},  # misspelt field
    ],
)
def test_bad_values_are_rejected_by_model_and_server_schema(bad):
    from flows.cluster import cluster

    with pytest.raises(ValidationError):
        ClusterParameters(**{**GOOD, **bad})
    assert not _server_accepts(cluster, {**GOOD, **bad})


def test_good_values_pass_the_server_schema():
    from flows.cluster import cluster

    assert _server_accepts(cluster, {**GOOD, "eps": 0.05, "rank": 20, "method": "residuals", "order": "norm"})
    assert _server_accepts(cluster, GOOD)


def test_schema_has_descriptions_bounds_and_enums():
    from flows.cluster import cluster

    schema = _schema(cluster)
    model = schema["definitions"]["ClusterParameters"]
    props = model["properties"]
    assert props["eps"]["exclusiveMinimum"] == 0 and props["eps"]["exclusiveMaximum"] == 1
    assert props["eps"]["minimum"] == 0 and props["eps"]["maximum"] == 1  # what the form's input uses
    assert props["rank"]["minimum"] == 1 and props["rank"]["maximum"] == 100_000
    assert "Range: 1 to 100000. Default: 10." in props["rank"]["description"]
    assert schema["definitions"]["Method"]["enum"] == ["approximate", "residuals", "max_norm"]
    assert schema["definitions"]["Order"]["enum"] == ["residual", "norm"]
    assert model["additionalProperties"] is False
    assert all(p.get("description") for p in props.values()), [k for k, p in props.items() if not p.get("description")]
    assert set(model["required"]) == {"store_url", "collection"}


def test_run_and_ingest_parameters():
    assert RunParameters(**GOOD, run_id="r1").run_id == "r1"
    with pytest.raises(ValidationError):
        RunParameters(**GOOD)  # the run id is required
    opts = IngestParameters(**GOOD, source="/data/x.safetensors", column_length=768, dtype="float32").ingest_options()
    assert opts == {"overwrite": False, "column_length": 768, "dtype": "float32"}


def test_scheduler_address_resolution(monkeypatch):
    from flows.dask_cluster import local_cluster_options, resolve_scheduler_address

    for var in ("CMSVD_DASK_SCHEDULER", "DASK_SCHEDULER_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    assert resolve_scheduler_address(None) is None
    assert resolve_scheduler_address("  ") is None  # empty dashboard field
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://b:8786")
    assert resolve_scheduler_address(None) == "tcp://b:8786"
    monkeypatch.setenv("CMSVD_DASK_SCHEDULER", "tcp://a:8786")
    assert resolve_scheduler_address("") == "tcp://a:8786"
    assert resolve_scheduler_address("tcp://p:1") == "tcp://p:1"
    opts = local_cluster_options()
    assert opts["host"] == "127.0.0.1" and opts["dashboard_address"].startswith("127.0.0.1:")


def test_retry_policy_and_artifact_keys():
    from flows._common import artifact_key, is_transient
    from storage.errors import CollectionNotFoundError, RunMismatchError

    assert is_transient(OSError("connection reset")) and is_transient(TimeoutError())
    for exc in (ValueError("eps"), CollectionNotFoundError("x"), RunMismatchError("x"), FileNotFoundError("x")):
        assert not is_transient(exc), exc
    assert artifact_key("cmsvd", "My_Collection.v2", "summary") == "cmsvd-my-collection-v2-summary"
