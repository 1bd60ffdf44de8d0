"""The real-weights workflow on a small safetensors file (issue 11), end to end through
``cmsvd`` against a Dask LocalCluster:

- ingest keeps the dtype (float32 here, beside an int64 tensor that is not cut), says
  how many tensors it keeps as they are and why;
- ``decompress --all -o FILE.safetensors`` restores every tensor's name, shape and dtype,
  passthrough and raw-stored tensors bit for bit, compressed groups within eps;
- ``decompress`` of one tensor gives its source shape and dtype, ``--columns`` the
  column form, a missing name exits 3;
- report.json: ``rank`` 0 for raw groups, labelled honest numbers, a baseline;
- ``report --sweep``: every point equals what a real run at that eps reports.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import cli, cli_json

from flows.cli import main
from storage import read_safetensors_header
from storage.ingest import safetensors_values, to_safetensors_dtype, write_safetensors

L, RANK, EPS = 16, 3, 0.05


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, dict, dict]:
    """A small 'transformer': low-rank weights sharing subspaces (F32, F16, BF16), biases,
    an int64 position_ids, and a noise weight that no rank-3 form fits."""
    rng = np.random.default_rng(7)
    bases = [np.linalg.qr(rng.standard_normal((L, 2)))[0] for _ in range(2)]

    def low(n, k):
        return (rng.standard_normal((n, 2)) @ bases[k].T * 3 + 0.01 * rng.standard_normal((n, L))).astype(np.float32)

    tensors = {"embeddings.position_ids": (np.arange(20).reshape(1, 20), "I64")}
    for i in range(4):
        tensors[f"layer.{i}.q.weight"] = (low(12 + i, i % 2), "F32")
        tensors[f"layer.{i}.q.bias"] = (rng.standard_normal(L).astype(np.float32), "F32")
        tensors[f"layer.{i}.k.weight"] = (low(10, (i + 1) % 2), "F16" if i == 1 else "BF16" if i == 2 else "F32")
    tensors["noise.weight"] = (rng.standard_normal((9, L)).astype(np.float32), "F32")
    raw = {n: (to_safetensors_dtype(v, d).tobytes() if d != "I64" else np.asarray(v, "<i8").tobytes())
           for n, (v, d) in tensors.items()}
    path = tmp_path_factory.mktemp("src") / "tiny-model.safetensors"
    write_safetensors(path, [{"name": n, "dtype": d, "shape": list(np.shape(v))} for n, (v, d) in tensors.items()],
                      lambda e: raw[e["name"]], {"format": "pt"})
    return path, tensors, raw






@pytest.fixture(scope="module")
def store(tmp_path_factory, model) -> str:
    """A store holding the model ingested as 'tiny-model' (what ingest says is checked by
    :func:`test_ingest_keeps_dtype_and_reports_passthrough`, on a store of its own)."""
    url = str(tmp_path_factory.mktemp("store"))
    assert main(["ingest", str(model[0]), "--column-length", str(L), "--store", url, "--json"]) == 0
    return url


def test_ingest_keeps_dtype_and_reports_passthrough(capsys, model, tmp_path):
    path = model[0]
    store = str(tmp_path / "store")
    code, out, err = cli(capsys, "ingest", path, "--column-length", L, "--store", store)
    assert code == 0, err
    assert "float32" in out and "float64" not in out
    assert "kept 5 of 14 tensors as they are" in out and "4 1-D (bias or norm)" in out and "1 non-float dtype I64" in out
    info = cli_json(capsys, "inspect", "tiny-model", "--store", store)
    assert info["dtype"] == "float32" and info["blocks"] == 9


@pytest.mark.slow  # a distributed run, a report and a sweep of two more runs
def test_round_trip_report_and_sweep(capsys, store, model, dask_address, tmp_path):
    path, tensors, raw = model
    summary = cli_json(capsys, "cluster", "tiny-model", "--store", store, "--rank", RANK, "--eps", EPS,
                       "--scheduler", dask_address, "--shard-size", 8)
    report = json.loads(Path(summary["files"]["report.json"]).read_text())

    # 5. rank 0 means "stored as it is", as the README says; adaptive_rank keeps r_C
    groups = report["groups"]
    raw_groups = [g for g in groups if g["stored"] == "raw"]
    assert raw_groups, "the noise weight cannot be compressed at rank 3"
    for g in groups:
        assert (g["rank"] == 0) == (g["stored"] == "raw")
        assert g["stored_error"] == 0.0 if g["stored"] == "raw" else g["rank"] > 0
        assert g["names"] and isinstance(g["names"][0], str)
    noise = next(g for g in raw_groups if "noise.weight" in g["names"])
    assert noise["error"] > EPS and noise["adaptive_rank"] == 0  # no rank <= r meets eps

    # 4. honest, labelled numbers
    assert report["raw_blocks"] == sum(len(g["blocks"]) for g in raw_groups)
    compressed = [g["error"] for g in groups if g["stored"] == "compressed"]
    assert report["max_certified_error_compressed"] == max(compressed) <= EPS
    assert summary["max_certified_error"] == report["max_certified_error_compressed"]
    assert summary["raw_blocks"] == report["raw_blocks"]
    assert report["raw_block_errors"][1] == pytest.approx(noise["error"]) and report["raw_unfit_blocks"] >= 1
    code, out, _ = cli(capsys, "report", "tiny-model", "--store", store)
    assert code == 0
    out = " ".join(out.replace("│", " ").split())  # the table wraps long cells
    assert f"at rank {RANK}" in out and "blocks stored raw" in out and "groups stored compressed" in out
    page = Path(summary["files"]["report.html"]).read_text()
    assert "blocks stored raw" in page and "layer.0.q.weight" in page  # names, not indices, in the tables
    # 7. baseline: each block alone at its own smallest rank meeting eps
    assert report["baseline"]["compression_ratio"] > 0 and "raw_blocks" in report["baseline"]

    # 2. the whole file back, in its source format
    out_file = tmp_path / "back.safetensors"
    info = cli_json(capsys, "decompress", "tiny-model", "--all", "-o", out_file, "--store", store)
    assert info["tensors"] == len(tensors) and info["passthrough"] == 5
    src, _ = read_safetensors_header(path)
    back, start = read_safetensors_header(out_file)
    assert list(back) == list(src)
    blob = out_file.read_bytes()
    got = {}
    for name, (values, dtype) in tensors.items():
        assert (back[name]["dtype"], back[name]["shape"]) == (dtype, list(np.shape(values))), name
        b0, b1 = back[name]["data_offsets"]
        got[name] = blob[start + b0 : start + b1]
    import storage

    coll = storage.open_collection(store, "tiny-model")
    for name in coll.passthrough_names + noise["names"]:
        assert got[name] == raw[name], f"{name} is stored as it is: it must come back bit for bit"
    for g in groups:  # every compressed group within eps, measured on the restored file
        if g["stored"] != "compressed":
            continue
        res2 = norm2 = 0.0
        for name in (coll.names[b] for b in g["blocks"]):
            dtype, shape = tensors[name][1], np.shape(tensors[name][0])
            a = safetensors_values(raw[name], dtype, shape).astype(np.float64)
            r = safetensors_values(got[name], dtype, shape).astype(np.float64)
            res2 += float(np.sum((a - r) ** 2))
            norm2 += float(np.sum(a ** 2))
        assert np.sqrt(res2 / norm2) <= EPS + 4e-3  # + the cast back to float16/bfloat16
    st = pytest.importorskip("safetensors")
    with st.safe_open(str(out_file), "np") as f:
        assert set(f.keys()) == set(tensors)

    # one tensor: source shape and dtype by default, the column form on request
    one = cli_json(capsys, "decompress", "tiny-model", "layer.1.k.weight", "-o", tmp_path / "k.npy", "--store", store)
    arr = np.load(tmp_path / "k.npy")
    assert one["shape"] == [10, L] and arr.dtype == np.float16 and arr.shape == (10, L)
    cli_json(capsys, "decompress", "tiny-model", "layer.1.k.weight", "--columns", "-o", tmp_path / "kc.npy", "--store", store)
    assert np.load(tmp_path / "kc.npy").shape == (L, 10)
    bias = cli_json(capsys, "decompress", "tiny-model", "layer.0.q.bias", "-o", tmp_path / "b.npy", "--store", store)
    assert bias["passthrough"] and np.load(tmp_path / "b.npy").tobytes() == raw["layer.0.q.bias"]
    code, _, err = cli(capsys, "decompress", "tiny-model", "no.such.tensor", "--store", store)
    assert code == 3 and "no block named 'no.such.tensor'" in err

    # 6. the sweep point at another eps equals what a real run at that eps reports
    other = 0.3
    cli_json(capsys, "report", "tiny-model", "--run-id", summary["run_id"], "--sweep", str(other),
             "--scheduler", dask_address, "--store", store)
    sweep = json.loads((Path(summary["files"]["report.json"]).parent / "sweep.json").read_text())
    assert {row["eps"] for row in sweep} == {other, EPS}  # the run's own point is in the sweep
    row = next(r for r in sweep if r["eps"] == other)
    real = cli_json(capsys, "cluster", "tiny-model", "--store", store, "--rank", RANK, "--eps", other,
                    "--scheduler", dask_address, "--shard-size", 8)
    real_report = json.loads(Path(real["files"]["report.json"]).read_text())
    assert row["run_id"] == real["run_id"]
    assert row["groups"] == real["groups"]
    assert row["compression_ratio"] == pytest.approx(real["compression_ratio"], rel=1e-12)
    assert row["compression_ratio_adaptive"] == pytest.approx(real["compression_ratio_adaptive"], rel=1e-12)
    assert row["raw_blocks"] == real_report["raw_blocks"]
    assert row["max_certified_error_compressed"] == pytest.approx(real_report["max_certified_error_compressed"], rel=1e-12)
    own = next(r for r in sweep if r["eps"] == EPS)
    assert own["compression_ratio_adaptive"] == pytest.approx(report["compression_ratio_adaptive"], rel=1e-12)


def test_decompress_all_of_other_formats_writes_one_npy_per_block(capsys, tmp_path):
    import storage

    rng = np.random.default_rng(3)
    basis = rng.standard_normal((10, 2))
    np.save(tmp_path / "stack.npy", np.stack([basis @ rng.standard_normal((2, 3)) for _ in range(6)]))
    store = str(tmp_path / "store")
    cli_json(capsys, "ingest", tmp_path / "stack.npy", "--store", store)
    cli_json(capsys, "cluster", "stack", "--rank", 2, "--eps", 0.1, "--sequential", "--store", store)
    code, _, err = cli(capsys, "decompress", "stack", "--all", "-o", tmp_path / "x.safetensors", "--store", store)
    assert code == 2 and "not ingested from a safetensors file" in err
    info = cli_json(capsys, "decompress", "stack", "--all", "-o", tmp_path / "out", "--store", store)
    files = sorted((tmp_path / "out").glob("*.npy"))
    assert info["blocks"] == 6 and len(files) == 6 and files[0].name == "000000-stack[0].npy"
    art = storage.open_artifact(store, "stack", info["artifact"])
    assert np.array_equal(np.load(files[3]), art.decompress(3))
    code, _, err = cli(capsys, "decompress", "stack", "--store", store)
    assert code == 2 and "give a BLOCK" in err
