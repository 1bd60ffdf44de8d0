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
    assert p.run_id is None and "scheduler_address" not in ClusterParameters.model_fields


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
    opts = IngestParameters(**GOOD, source="/data/day2.npy", append=True, name_prefix="day2/").ingest_options()
    assert opts == {"overwrite": False, "append": True, "name_prefix": "day2/"}


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


# ---- what a run may touch: allowed roots and the scheduler (issue 9, item 12) -------------


def test_allowed_roots_parsing_and_matching(tmp_path, monkeypatch):
    from flows.params import ALLOWED_ROOTS_ENV, allowed_roots, root_problem

    monkeypatch.delenv(ALLOWED_ROOTS_ENV, raising=False)
    assert allowed_roots() is None and root_problem("/etc") is None  # unset: no limit (local default)
    monkeypatch.setenv(ALLOWED_ROOTS_ENV, " , ")
    assert allowed_roots() is None
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to("/etc")
    (data / "escape").symlink_to("/etc")
    roots = [str(data), "s3://cmsvd/store", "memory://"]
    monkeypatch.setenv(ALLOWED_ROOTS_ENV, ",".join(roots))
    assert allowed_roots() == roots
    for inside in (str(data), f"{data}/sub/x.npy", f"file://{data}/sub", f"{data}/sub/../x", "s3://cmsvd/store",
                   "s3://cmsvd/store/a/b", "s3a://cmsvd/store/a", "memory://anything/at/all"):
        assert root_problem(inside) is None, inside
    for outside in ("/etc", f"{data}x", f"{data}/../x", f"{data}/escape/passwd", str(tmp_path / "link"),
                    "s3://cmsvd/storex", "s3://cmsvd", "s3://other/store", "s3://cmsvd/store/../x",
                    "gcs://cmsvd/store", "simplecache::s3://cmsvd/store/a", "relative/path"):
        problem = root_problem(outside)
        assert problem and "CMSVD_ALLOWED_ROOTS" in problem, (outside, problem)


def test_stores_sources_and_scheduler_are_checked_together(tmp_path, monkeypatch):
    from flows.params import DemoParameters, InvalidParameters, validate_params

    monkeypatch.setenv("CMSVD_ALLOWED_ROOTS", str(tmp_path))
    ok = {"store_url": str(tmp_path / "store"), "collection": "c"}
    assert validate_params(IngestParameters, {**ok, "source": str(tmp_path / "x.npy")}).source.endswith("x.npy")
    assert validate_params(DemoParameters, ok).store_url == ok["store_url"]
    # an empty scheduler field (older dashboard forms) is ignored; anything else is refused by name
    assert validate_params(RunParameters, {**ok, "run_id": "r", "scheduler_address": ""}).run_id == "r"
    assert validate_params(ClusterParameters, {**ok, "scheduler_address": None}).collection == "c"

    with pytest.raises(InvalidParameters) as info:
        validate_params(IngestParameters, {"store_url": "/etc", "collection": "c", "source": "/root/.ssh/id_rsa"},
                        "cmsvd-ingest")
    message = str(info.value)
    assert "\n" not in message and "invalid parameters for cmsvd-ingest (2 fields)" in message, message
    assert "store_url: '/etc' is outside the allowed roots" in message
    assert "source: '/root/.ssh/id_rsa' is outside the allowed roots" in message

    with pytest.raises(InvalidParameters) as info:
        validate_params(ClusterParameters, {**ok, "store_url": "s3://elsewhere", "rank": 0,
                                            "scheduler_address": "tcp://rogue:8786"}, "cmsvd-cluster")
    message = str(info.value)
    assert "(3 fields)" in message and "store_url: 's3://elsewhere' is outside" in message, message
    assert "scheduler_address='tcp://rogue:8786': not a run parameter" in message and "CMSVD_DASK_SCHEDULER" in message
    for model in (ClusterParameters, RunParameters):
        assert "scheduler_address" not in model.model_json_schema()["properties"]


def test_cli_scheduler_reaches_in_process_flows_through_the_environment(monkeypatch):
    import os

    from flows.cli import _flow_scheduler
    from flows.dask_cluster import resolve_scheduler_address

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    monkeypatch.setenv("CMSVD_DASK_SCHEDULER", "tcp://worker:1")
    with _flow_scheduler("tcp://mine:2"):
        assert resolve_scheduler_address() == "tcp://mine:2"
    assert os.environ["CMSVD_DASK_SCHEDULER"] == "tcp://worker:1"
    with _flow_scheduler("  "):
        assert resolve_scheduler_address() == "tcp://worker:1"
    monkeypatch.delenv("CMSVD_DASK_SCHEDULER")
    with _flow_scheduler("tcp://mine:2"):
        assert resolve_scheduler_address() == "tcp://mine:2"
    assert "CMSVD_DASK_SCHEDULER" not in os.environ
