"""What a user sees on the Prefect dashboard (issue 15), against a real Prefect server.

- every numeric field of every deployment's parameter schema carries ``minimum`` and
  ``maximum`` (the form's number inputs) and states its range and default in words;
- descriptions (fields, models, flows, deployments) have no ``<`` (read as an HTML tag)
  and no backticks (shown literally);
- the deployments enforce their schema, and ``register`` switches it back on;
- a run created with validation switched off (the form's "Validate parameters" switch,
  ``enforce_parameter_schema: false`` in the REST call) is executed the way a process
  worker does (``python -m prefect.engine``) and fails first thing, naming every bad
  field on one line, without any task or Dask cluster;
- the report artifacts carry the plots (data URIs) and, on a local store, the path to
  copy rather than a file:// link (S3: test_flows_dashboard_s3.py).
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml
from flows_harness import REPO, api_call, wait_until

POOL = "cmsvd-dashboard-pool"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
GOOD = {"store_url": "/nonexistent/store", "collection": "demo"}


# ---- schema walking ----------------------------------------------------------------------


def _resolve(node: dict, schema: dict) -> dict:
    ref = node.get("$ref")
    if not ref:
        return node
    name = ref.rsplit("/", 1)[-1]
    return (schema.get("definitions") or schema.get("$defs") or {})[name]


def _numeric_fields(schema: dict) -> dict[str, list[dict]]:
    """``{model.field: [numeric branches]}`` for every field of every model in *schema*."""
    out: dict[str, list[dict]] = {}
    models = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}
    for model_name, model in models.items():
        for field, prop in (model.get("properties") or {}).items():
            branches = [_resolve(b, schema) for b in prop.get("anyOf", [prop])]
            numeric = [b for b in branches if b.get("type") in ("integer", "number")]
            if numeric:
                out[f"{model_name}.{field}"] = [{**prop, **b} for b in numeric]
    return out


def _descriptions(node) -> list[str]:
    """Every "description" string anywhere in a JSON document."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                found.append(value)
            else:
                found += _descriptions(value)
    elif isinstance(node, list):
        for value in node:
            found += _descriptions(value)
    return found


def _clean(text: str) -> bool:
    return "<" not in text and "`" not in text


def _all_flows():
    from flows.cluster import cluster, compress
    from flows.ingest import demo_data, ingest
    from flows.report import report

    return [cluster, compress, report, ingest, demo_data]


def _schema(flow) -> dict:
    from prefect.utilities.callables import parameter_schema

    return parameter_schema(flow).model_dump_for_openapi()


# ---- without a server --------------------------------------------------------------------


@pytest.mark.parametrize("flow_index", range(5))
def test_every_numeric_field_shows_bounds_and_default(flow_index):
    flow = _all_flows()[flow_index]
    numeric = _numeric_fields(_schema(flow))
    for name, branches in numeric.items():
        for b in branches:
            assert "minimum" in b and "maximum" in b, (flow.name, name, b)
            assert b["minimum"] <= b["maximum"]
            text = b.get("description", "")
            assert "Range: " in text and "Default: " in text, (name, text)


def test_numeric_field_inventory_and_exclusive_bounds():
    numeric = _numeric_fields(_schema(_all_flows()[0]))
    assert set(numeric) == {f"ClusterParameters.{f}" for f in
                            ("rank", "eps", "oversampling", "patience", "shard_size", "merge_neighbours")}
    (eps,) = numeric["ClusterParameters.eps"]
    # the form's input gets min/max, the validator the strict bounds
    assert (eps["minimum"], eps["exclusiveMinimum"], eps["maximum"], eps["exclusiveMaximum"]) == (0, 0, 1, 1)
    assert "more than 0 and less than 1" in eps["description"] and "Default: 0.1" in eps["description"]
    (rank,) = numeric["ClusterParameters.rank"]
    assert "Range: 1 to 100000. Default: 10." in rank["description"]
    demo = _numeric_fields(_schema(_all_flows()[4]))
    assert {"DemoParameters.seed", "DemoParameters.noise", "DemoParameters.blocks_per_subspace"} <= set(demo)


def test_descriptions_render_in_both_dashboards():
    for flow in _all_flows():
        schema = _schema(flow)
        texts = _descriptions(schema)
        assert texts, flow.name
        bad = [t for t in texts if not _clean(t)]
        assert not bad, (flow.name, bad)
    for flow in _all_flows()[:3]:  # flows/ingest.py keeps its own docstrings
        assert flow.description and _clean(flow.description), flow.name
    deployments = yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())["deployments"]
    assert all(_clean(d["description"]) for d in deployments)
    assert all(d["enforce_parameter_schema"] is True for d in deployments)


def test_validate_params_names_every_bad_field_on_one_line():
    from flows.params import ClusterParameters, InvalidParameters, validate_params

    bad = {**GOOD, "eps": 1.5, "rank": 0, "method": "svd", "run_id": "a/b", "epsilon": 0.1}
    with pytest.raises(InvalidParameters) as info:
        validate_params(ClusterParameters, bad, "cmsvd-cluster")
    message = str(info.value)
    assert "\n" not in message and "(5 fields)" in message, message
    for needle in ("eps=1.5 is out of range (more than 0 and less than 1)", "rank=0 is out of range (1 to 100000)",
                   "method='svd'", "run_id='a/b'", "epsilon: unknown field"):
        assert needle in message, (needle, message)
    assert isinstance(info.value, ValueError)  # permanent for the retry policy
    good = validate_params(ClusterParameters, {**GOOD, "eps": 0.2}, "cmsvd-cluster")
    assert good.eps == 0.2 and validate_params(ClusterParameters, good) is good


def test_local_store_links_are_paths_not_file_urls():
    from flows._common import browser_link
    from flows.report import summary_markdown

    assert browser_link("/data/store/runs/demo/r/report.json") is None
    assert browser_link("file:///data/x.json") is None
    assert browser_link("https://example.org/x.json").url == "https://example.org/x.json"
    report = {
        "run_id": "r", "collection": {"name": "demo", "blocks": 2, "rows": 3, "columns": 4, "dtype": "float64"},
        "params": {"rank": 1, "eps": 0.1}, "groups": [{"error": 0.01, "bound": 0.02}],
        "compression_ratio": 2.0, "compression_ratio_adaptive": 2.5, "max_error": 0.01,
        "bytes": {"input": 100, "compressed": 50}, "timings": {"scan": 0.1},
    }
    urls = {"plots/errors.png": "/s/runs/demo/r/plots/errors.png", "report": "file:///s/runs/demo/r/report.json"}
    md = summary_markdown(report, urls, {k: None for k in urls}, {"plots/errors.png": b"\x89PNG fake"})
    assert "file://" not in md and "/s/runs/demo/r/report.json" in md
    assert "](data:image/png;base64," in md and "cmsvd report demo --run-id r" in md


# ---- against the server ------------------------------------------------------------------


@pytest.fixture(scope="module")
def registered(prefect_server, tmp_path_factory):
    """The deployments of deploy/prefect.yaml, registered as the register service does."""
    tmp = tmp_path_factory.mktemp("dashboard")
    env = dict(prefect_server["env"], CMSVD_STORE_URL=str(tmp / "store"), CMSVD_WORK_POOL=POOL,
               CMSVD_DEMO_COLLECTION="demo", CMSVD_NIGHTLY_COLLECTION="demo")
    reg = subprocess.run([sys.executable, "-m", "flows.deployments", "register", "--timeout", "60"],
                         env=env, cwd=tmp, capture_output=True, text=True, timeout=300)
    assert reg.returncode == 0, reg.stdout[-3000:] + reg.stderr[-3000:]
    api = prefect_server["url"]
    flows = {f["id"]: f["name"] for f in api_call("POST", f"{api}/flows/filter", json={}).json()}
    deployments = api_call("POST", f"{api}/deployments/filter", json={}).json()
    by_name = {f"{flows[d['flow_id']]}/{d['name']}": d for d in deployments if d["work_pool_name"] == POOL}
    return {"api": api, "env": env, "tmp": tmp, "deployments": by_name}


@pytest.mark.timeout(360)
def test_registered_schemas_show_bounds_and_clean_descriptions(registered):
    deployments = registered["deployments"]
    assert {"cmsvd-cluster/nightly", "cmsvd-cluster/on-demand", "cmsvd-compress/compress", "cmsvd-report/report",
            "cmsvd-ingest/ingest", "cmsvd-demo-data/demo-data"} <= set(deployments)
    seen = 0
    for name, d in deployments.items():
        assert d["enforce_parameter_schema"] is True, name
        schema = d["parameter_openapi_schema"]
        for field, branches in _numeric_fields(schema).items():
            for b in branches:
                assert "minimum" in b and "maximum" in b, (name, field, b)
                seen += 1
        texts = _descriptions(schema) + [d.get("description") or ""]
        assert all(_clean(t) for t in texts), (name, [t for t in texts if not _clean(t)])
    assert seen >= 6 + 7  # cluster's and demo-data's numeric fields at least
    # the on-demand form: eps with its bounds, run_id without a swallowed tag
    props = deployments["cmsvd-cluster/on-demand"]["parameter_openapi_schema"]["definitions"]["ClusterParameters"]["properties"]
    assert props["eps"]["minimum"] == 0 and props["eps"]["maximum"] == 1
    assert "runs/COLLECTION/" in props["run_id"]["description"]


@pytest.mark.timeout(360)
def test_register_switches_schema_enforcement_back_on(registered, prefect_api):
    from flows.deployments import enforce_parameter_schemas

    api, d = registered["api"], registered["deployments"]["cmsvd-report/report"]
    assert api_call("PATCH", f"{api}/deployments/{d['id']}", json={"enforce_parameter_schema": False}).status_code == 204
    assert "cmsvd-report/report" in enforce_parameter_schemas()
    assert api_call("GET", f"{api}/deployments/{d['id']}").json()["enforce_parameter_schema"] is True
    assert enforce_parameter_schemas() == []


@pytest.mark.timeout(360)
def test_run_with_validation_off_fails_first_thing_naming_every_bad_field(registered):
    api = registered["api"]
    on_demand = registered["deployments"]["cmsvd-cluster/on-demand"]
    params = {**on_demand["parameters"]["params"], "eps": 1.5, "rank": 0, "scheduler_address": "tcp://127.0.0.1:1"}

    # validation on (the default): the server refuses, naming (only) the first bad field
    refused = api_call("POST", f"{api}/deployments/{on_demand['id']}/create_flow_run",
                   json={"parameters": {"params": params}, "enforce_parameter_schema": True})
    assert refused.status_code == 409 and any(f in refused.text for f in ("rank", "eps", "scheduler_address")), refused.text

    # validation switched off for this run: Prefect creates it...
    created = api_call("POST", f"{api}/deployments/{on_demand['id']}/create_flow_run",
                   json={"parameters": {"params": params}, "enforce_parameter_schema": False})
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]

    # ...and the flow, started as a process worker starts it, refuses it before any work
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "prefect.engine", run_id], env=registered["env"],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    elapsed = time.monotonic() - start

    def finished():
        state = api_call("GET", f"{api}/flow_runs/{run_id}").json()["state"]
        return state if state["type"] in TERMINAL else None

    state = wait_until(finished, 60, "the flow run to end")
    output = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert state["type"] == "FAILED", (state, output)
    message = state["message"]
    assert "invalid parameters for cmsvd-cluster (3 fields)" in message, message
    assert "rank=0 is out of range (1 to 100000)" in message and "eps=1.5 is out of range" in message
    # the scheduler is the worker's: a run naming one is refused, and never connected to
    assert "scheduler_address='tcp://127.0.0.1:1': not a run parameter" in message, message
    # no stage ran, no Dask client was made (dask_client logs before connecting)
    tasks = api_call("POST", f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [run_id]}}}).json()
    assert tasks == [], [t["name"] for t in tasks]
    logs = api_call("POST", f"{api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200}).json()
    text = "\n".join(entry["message"] for entry in logs)
    # dask_client's own log lines (the refusal itself names CMSVD_DASK_SCHEDULER)
    assert "Using the Dask scheduler" not in text and "starting a LocalCluster" not in text, text
    assert any("invalid parameters for cmsvd-cluster" in line for line in text.splitlines()), text
    assert elapsed < 120, elapsed


class Forbidden:
    """A stand-in for a function that starts work; records each call, then fails the test."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, *args, **kwargs):
        self.calls.append(args)
        raise AssertionError("started work that the parameters should have prevented")


@pytest.fixture
def forbidden(monkeypatch) -> Forbidden:
    """Every call by which the clustering flows start work (a Dask client, opening the
    collection, deriving or reading a run id) replaced by a :class:`Forbidden`."""
    import flows.cluster as cluster_module

    stub = Forbidden()
    for name in ("dask_client", "open_collection", "default_run_id", "stored_run_params"):
        monkeypatch.setattr(cluster_module, name, stub)
    monkeypatch.setattr("flows._run.open_collection", stub)
    return stub


@pytest.mark.timeout(240)
def test_in_process_flows_refuse_bad_parameters_before_the_cluster_starts(prefect_api, forbidden):
    import flows.cluster as cluster_module
    import flows.report as report_module

    calls = forbidden.calls

    state = cluster_module.cluster(params={**GOOD, "eps": 1.5, "rank": 0, "oversampling": -1}, return_state=True)
    assert state.is_failed()
    assert "invalid parameters for cmsvd-cluster (3 fields)" in state.message, state.message
    for needle in ("rank=0", "eps=1.5", "oversampling=-1"):
        assert needle in state.message, (needle, state.message)

    state = cluster_module.compress(params={**GOOD, "run_id": "../x", "collection": ""}, return_state=True)
    assert state.is_failed() and "invalid parameters for cmsvd-compress (2 fields)" in state.message, state.message
    state = report_module.report(params={**GOOD}, return_state=True)
    assert state.is_failed() and "run_id: required" in state.message, state.message
    assert calls == []


@pytest.mark.timeout(240)
def test_in_process_flows_keep_to_the_worker_roots_and_scheduler(prefect_api, forbidden, monkeypatch, tmp_path):
    """CMSVD_ALLOWED_ROOTS limits stores and sources; a flow run cannot choose the scheduler."""
    import numpy as np
    import storage

    import flows.cluster as cluster_module
    from flows.ingest import demo_data, ingest

    calls = forbidden.calls
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    monkeypatch.setenv("CMSVD_ALLOWED_ROOTS", f"{allowed},s3://cmsvd/store")
    outside = tmp_path / "outside"

    state = cluster_module.cluster(params={"store_url": str(outside), "collection": "demo",
                                           "scheduler_address": "tcp://rogue.example:8786"}, return_state=True)
    assert state.is_failed()
    message = state.message
    assert "invalid parameters for cmsvd-cluster (2 fields)" in message, message
    assert f"store_url: '{outside}' is outside the allowed roots (CMSVD_ALLOWED_ROOTS: {allowed}, s3://cmsvd/store)" in message
    assert "scheduler_address='tcp://rogue.example:8786': not a run parameter" in message
    state = cluster_module.compress(params={"store_url": "s3://cmsvd/store/../../other", "collection": "demo",
                                            "run_id": "r"}, return_state=True)
    assert state.is_failed() and "store_url: 's3://cmsvd/store/../../other' has a '.', '..'" in state.message, state.message
    assert calls == []

    real_ingest = storage.ingest_path
    monkeypatch.setattr(storage, "ingest_path", forbidden)
    source = allowed / "stack.npy"
    np.save(source, np.ones((3, 4, 2)))
    state = ingest(params={"store_url": str(allowed / "store"), "collection": "c", "source": "/etc/passwd"},
                   return_state=True)
    assert state.is_failed() and "invalid parameters for cmsvd-ingest (1 field): source: '/etc/passwd' is outside" \
        in state.message, state.message
    state = ingest(params={"store_url": str(outside), "collection": "c", "source": f"{allowed}/../outside/x.npy"},
                   return_state=True)
    assert state.is_failed() and "(2 fields)" in state.message, state.message
    state = demo_data(params={"store_url": str(outside), "collection": "c"}, return_state=True)
    assert state.is_failed() and "invalid parameters for cmsvd-demo-data (1 field): store_url" in state.message
    assert calls == [] and not outside.exists()

    # inside the roots the same flow runs
    monkeypatch.setattr(storage, "ingest_path", real_ingest)
    summary = ingest(params={"store_url": str(allowed / "store"), "collection": "c", "source": str(source)})
    assert summary["blocks"] == 3
