"""safetensors round trip (issue 11): the collection dtype comes from the tensors cut into
blocks, every tensor's layout is recorded, tensors that cannot be cut are kept byte for
byte (passthrough), and an artifact writes the whole file back with every name, shape,
dtype and the header's metadata.

The files are written by :func:`storage.ingest.write_safetensors` (no torch) and, where
the ``safetensors`` package is installed, read back with it too.
"""

from __future__ import annotations

import numpy as np
import pytest

from storage import (
    CorruptedFileError,
    EmptyInputError,
    ingest_safetensors,
    open_collection,
    read_safetensors_header,
    write_artifact,
)
from storage.ingest import safetensors_values, to_safetensors_dtype, write_safetensors

L = 8


def _write(path, tensors: dict[str, tuple[np.ndarray, str]], metadata=None) -> dict[str, bytes]:
    """Write {name: (values, safetensors dtype)} in the given order; return each tensor's bytes."""
    raw = {}
    for name, (values, dtype) in tensors.items():
        if dtype in ("F64", "F32", "F16", "BF16"):
            raw[name] = to_safetensors_dtype(values, dtype).tobytes()
        else:
            raw[name] = np.asarray(values).astype({"I64": "<i8", "I32": "<i4", "U8": "u1"}[dtype]).tobytes()
    entries = [{"name": n, "dtype": d, "shape": list(np.shape(v))} for n, (v, d) in tensors.items()]
    write_safetensors(path, entries, lambda e: raw[e["name"]], metadata)
    return raw


def _model(rng) -> dict[str, tuple[np.ndarray, str]]:
    basis = rng.standard_normal((L, 2))

    def low(n):
        return (rng.standard_normal((n, 2)) @ basis.T + 1e-3 * rng.standard_normal((n, L))).astype(np.float32)

    return {
        "embeddings.position_ids": (np.arange(12).reshape(1, 12), "I64"),  # 2-D int: kept, not widening
        "norm.weight": (rng.standard_normal(L).astype(np.float32), "F32"),  # 1-D
        "layer.0.weight": (low(6), "F32"),
        "layer.1.weight": (low(5), "F32"),
        "layer.2.weight": (low(3).reshape(3, 1, L), "F16"),
        "layer.3.weight": (low(4), "BF16"),
        "odd.weight": (rng.standard_normal((3, 5)).astype(np.float32), "F32"),  # 15 values: not a multiple of L
        "noise.weight": (rng.standard_normal((7, L)).astype(np.float32), "F32"),  # no low-rank form: stored raw
    }


def test_dtype_comes_from_the_ingested_tensors(tmp_path, root, rng):
    _write(tmp_path / "m.safetensors", _model(rng))
    coll = ingest_safetensors(root, "m", tmp_path / "m.safetensors", column_length=L)
    # an int64 tensor (skipped) used to widen everything to float64
    assert coll.dtype == np.float32
    assert coll.names == ["layer.0.weight", "layer.1.weight", "layer.2.weight", "layer.3.weight", "noise.weight"]
    kept = {e["name"]: e["reason"] for e in coll.passthrough_entries}
    assert kept == {"embeddings.position_ids": "non-float dtype I64", "norm.weight": "1-D (bias or norm)",
                    "odd.weight": f"size not a multiple of the column length {L}"}
    assert sorted(coll.provenance["skipped"]) == sorted(kept)
    # F64 among the tensors cut into blocks does widen (lossless)
    _write(tmp_path / "d.safetensors", {"a": (rng.standard_normal((2, L)), "F64"), "b": (np.ones(3, np.float32), "F32")})
    assert ingest_safetensors(root, "d", tmp_path / "d.safetensors", column_length=L).dtype == np.float64


def test_layout_and_passthrough_bytes_are_recorded(tmp_path, root, rng):
    model = _model(rng)
    raw = _write(tmp_path / "m.safetensors", model, {"format": "pt"})
    coll = ingest_safetensors(root, "m", tmp_path / "m.safetensors", column_length=L, per="column")
    layout = {t["name"]: t for t in coll.provenance["tensors"]}
    assert list(layout) == list(model)  # file order
    assert coll.provenance["metadata"] == {"format": "pt"}
    t = layout["layer.2.weight"]
    assert (t["dtype"], t["shape"], t["kind"], t["column_length"]) == ("F16", [3, 1, L], "columns", L)
    first, count = t["blocks"]
    assert count == 3 and coll.names[first : first + count] == [f"layer.2.weight:{j}" for j in range(3)]
    for name in coll.passthrough_names:
        assert coll.passthrough(name) == raw[name]
    assert coll.verify()["passthrough"] == 3


def test_corrupted_passthrough_is_reported(tmp_path, root, rng):
    _write(tmp_path / "m.safetensors", _model(rng))
    ingest_safetensors(root, "m", tmp_path / "m.safetensors", column_length=L)
    from pathlib import Path

    chunk = next(p for p in (Path(root) / "m" / "passthrough" / "c").rglob("*") if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(CorruptedFileError, match="passthrough"):
        open_collection(root, "m").passthrough("norm.weight")


def test_nothing_to_cut_is_a_clear_error(tmp_path, root):
    _write(tmp_path / "b.safetensors", {"bias": (np.ones(L, np.float32), "F32"), "ids": (np.arange(4).reshape(2, 2), "I64")})
    with pytest.raises(EmptyInputError, match=r"no tensor can be cut into columns of length 8 \(1 1-D \(bias or norm\); 1 non-float dtype I64\)"):
        ingest_safetensors(root, "b", tmp_path / "b.safetensors", column_length=L)


def _compress(root, coll, eps):
    """A rank-2 artifact: every block in one group with its optimal basis, except the noise block, raw."""
    first, count = next(t["blocks"] for t in coll.provenance["tensors"] if t["name"] == "noise.weight")
    noise = list(range(first, first + count))
    groups = [[i for i in range(coll.n_blocks) if i not in noise]] + [[i] for i in noise]
    data, _ = coll.blocks(groups[0])
    u, s, _ = np.linalg.svd(data.astype(np.float64), full_matrices=False)
    basis = u[:, :2]
    err = float(np.sqrt((s[2:] ** 2).sum() / (s ** 2).sum()))
    assert err <= eps
    coefs = [None] * coll.n_blocks
    for i in groups[0]:
        coefs[i] = basis.T @ coll.block(i).astype(np.float64)
    for i in noise:
        coefs[i] = coll.block(i)
    return write_artifact(root, coll.name, "a", groups=groups, bases=[basis] + [None] * len(noise), coefficients=coefs,
                          errors=[err] + [0.0] * len(noise), ranks=[2] + [0] * len(noise))


@pytest.mark.parametrize("per", ["tensor", "column"])
def test_artifact_writes_the_whole_file_back(tmp_path, root, rng, per):
    eps = 0.01
    model = _model(rng)
    raw = _write(tmp_path / "m.safetensors", model, {"format": "pt"})
    coll = ingest_safetensors(root, "m", tmp_path / "m.safetensors", column_length=L, per=per)
    art = _compress(root, coll, eps)
    assert art.tensor_names == list(model)
    out = tmp_path / "back.safetensors"
    info = art.export_safetensors(out)
    assert info["tensors"] == len(model) and info["passthrough"] == 3
    src_header, _ = read_safetensors_header(tmp_path / "m.safetensors")
    back_header, start = read_safetensors_header(out)
    assert list(back_header) == list(src_header)
    blob = out.read_bytes()
    for name, (values, dtype) in model.items():
        assert back_header[name]["dtype"] == dtype and back_header[name]["shape"] == list(np.shape(values))
        b0, b1 = back_header[name]["data_offsets"]
        got = blob[start + b0 : start + b1]
        t = art.tensor_info(name)
        if t["kind"] == "passthrough" or name == "noise.weight":
            assert got == raw[name], f"{name}: raw tensors must come back bit for bit"
        else:
            src = safetensors_values(raw[name], dtype, np.shape(values)).astype(np.float64)
            rec = safetensors_values(got, dtype, np.shape(values)).astype(np.float64)
            # the group's error is <= eps; a tensor's share can exceed it only up to the
            # cast back to its dtype (float16/bfloat16 rounding)
            tol = {"F32": 1e-6, "F16": 2e-3, "BF16": 1e-2}[dtype]
            assert np.linalg.norm(rec - src) <= (eps + tol) * np.linalg.norm(src) * np.sqrt(coll.n_blocks), name
        # the Python API: original shape and dtype by default, column form on request
        orig = art.tensor(name)
        assert orig.shape == tuple(np.shape(values))
        assert orig.dtype == {"F32": np.float32, "F16": np.float16, "BF16": np.float32, "I64": np.int64}[dtype]
        if t["kind"] == "columns":
            cols = art.tensor(name, form="columns")
            assert cols.shape == (L, int(np.prod(np.shape(values))) // L) and cols.dtype == art.dtype
    if per == "tensor":
        i = coll.names.index("layer.2.weight")
        assert art.decompress(i, form="original").shape == (3, 1, L) and art.decompress(i, form="original").dtype == np.float16
        assert art.decompress(i, form="columns").shape == (L, 3)  # the column form on request
    st = pytest.importorskip("safetensors")
    with st.safe_open(str(out), "np") as f:  # the reference reader accepts the file
        assert set(f.keys()) == set(model) and f.metadata() == {"format": "pt"}
        assert np.array_equal(f.get_tensor("embeddings.position_ids"), model["embeddings.position_ids"][0])


def test_bfloat16_cast_rounds_to_nearest_even():
    x = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, -2.5, 0.0], dtype=np.float32)
    bits = to_safetensors_dtype(x, "BF16")
    assert bits.dtype == np.dtype("<u2")
    back = safetensors_values(bits.tobytes(), "BF16", [5])
    # 1 + 2^-8 is a tie: to even (1.0); 1 + 3*2^-8 is a tie: to even (1 + 2^-6)
    assert back.tolist() == [1.0, 1.0, 1.0 + 2**-6, -2.5, 0.0]


def test_decompress_range_equals_block_by_block(root, rng):
    from storage import ingest_blocks

    blocks = [rng.standard_normal((6, 1 + i % 3)) for i in range(20)]
    ingest_blocks(root, "r", blocks)
    groups = [[i, i + 1] for i in range(0, 20, 2)]  # 10 groups: every basis read at once
    bases, coefs, errors = [], [None] * 20, []
    for g, members in enumerate(groups):
        data = np.hstack([blocks[i] for i in members])
        if g % 5 == 0:
            bases.append(None)
            for i in members:
                coefs[i] = blocks[i]
            errors.append(0.0)
            continue
        u = np.linalg.svd(data, full_matrices=False)[0][:, :2]
        bases.append(u)
        for i in members:
            coefs[i] = u.T @ blocks[i]
        errors.append(0.5)
    art = write_artifact(root, "r", "a", groups=groups, bases=bases, coefficients=coefs, errors=errors)
    one_by_one = [art.decompress(i, form="columns") for i in range(20)]
    for first, stop in ((0, 20), (3, 17), (5, 6), (9, 9)):
        expected = np.concatenate(one_by_one[first:stop] or [np.zeros((6, 0))], axis=1)
        np.testing.assert_allclose(art.decompress_range(first, stop), expected, rtol=1e-12, atol=1e-12)
    raw = [i for g, members in enumerate(groups) if bases[g] is None for i in members]
    for i in raw:  # raw blocks are copies: bit for bit
        assert np.array_equal(art.decompress_range(i, i + 1), blocks[i])
