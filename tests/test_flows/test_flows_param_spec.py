"""The Prefect parameter model, the CLI's options and the stored run records all derive
from pipeline.params.ClusteringParams (issue: five validation sites had drifted)."""

import typer.main
import pytest
from pydantic import ValidationError

import storage
from flows._run import RUN_KEYS, default_run_id, stored_run_params
from flows.cli import app
from flows.params import ClusterParameters
from pipeline.params import ClusteringParams


def _bounds(field):
    out = {}
    for item in field.metadata:
        for key in ("ge", "gt", "le", "lt"):
            if hasattr(item, key):
                out[key] = getattr(item, key)
    return out


@pytest.mark.parametrize("name", ["rank", "eps", "oversampling", "patience", "shard_size", "merge_neighbours"])
def test_form_bounds_and_defaults_are_the_tables(name):
    field = ClusterParameters.model_fields[name]
    assert _bounds(field) == ClusteringParams.constraints[name].bounds()
    assert field.default == ClusteringParams.default(name)


def test_form_refuses_patience_zero_like_the_library():
    with pytest.raises(ValidationError, match="patience"):
        ClusterParameters(store_url="/tmp/s", collection="c", patience=0)


def test_cli_option_bounds_are_the_tables():
    command = typer.main.get_command(app).commands["cluster"]
    options = {p.name: p for p in command.params}
    for name in ("rank", "oversampling", "patience", "shard_size"):
        bounds = ClusteringParams.constraints[name].bounds()
        assert options[name].min == bounds.get("ge") and options[name].max == bounds.get("le"), name
        assert options[name].default == ClusteringParams.default(name)


def test_one_run_id_whatever_keywords_are_spelt_out(tmp_path):
    storage.ingest_blocks(str(tmp_path), "c", [[[1.0, 0.0], [0.0, 1.0]]] * 3)
    coll = storage.open_collection(str(tmp_path), "c")
    form = ClusterParameters(store_url=str(tmp_path), collection="c").pipeline_kwargs()
    partial = {k: v for k, v in form.items() if k not in ("tol", "batch_bytes")}
    assert default_run_id(coll, partial) == default_run_id(coll, form)


def test_stored_run_params_keep_batch_bytes(tmp_path):
    """A run created through the API with a non-default batch_bytes can be reopened from
    its record (batch_bytes is part of the run fingerprint)."""
    from pipeline.distributed import ClusteringRun

    storage.ingest_blocks(str(tmp_path), "c", [[[1.0, 0.0], [0.0, 1.0]]] * 3)
    coll = storage.open_collection(str(tmp_path), "c")
    ClusteringRun(coll, rank=1, eps=0.1, run_id="r", batch_bytes=4096)
    stored = stored_run_params(coll, "r")
    assert set(RUN_KEYS) == set(stored) and stored["batch_bytes"] == 4096
    ClusteringRun(coll, **stored, run_id="r")  # same fingerprint: no RunMismatchError
