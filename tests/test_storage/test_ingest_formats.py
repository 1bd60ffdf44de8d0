"""Round trip of every source format: values and dtypes exact."""

from __future__ import annotations

import numpy as np
import pytest

from storage import (
    BlockValidationError,
    CollectionNotFoundError,
    ingest_hdf5,
    ingest_mat,
    ingest_npy_folder,
    ingest_npy_stack,
    ingest_path,
    ingest_safetensors,
    ingest_zarr_array,
    mimo_block,
    open_collection,
)


def assert_blocks(coll, expected, dtype=None):
    assert coll.n_blocks == len(expected)
    for i, b in enumerate(expected):
        got = coll.block(i)
        if dtype is not None:
            assert got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_npy_stack(tmp_path, root, rng, dtype, monkeypatch):
    import storage.ingest as ingest

    monkeypatch.setattr(ingest, "WINDOW_BYTES", 3 * 6 * 5 * 8)  # several mapping windows
    stack = rng.standard_normal((10, 6, 5)).astype(dtype)
    np.save(tmp_path / "s.npy", stack)
    coll = ingest_npy_stack(root, "c", tmp_path / "s.npy", chunk_columns=7)
    assert_blocks(coll, list(stack), dtype)
    assert coll.names[3] == "s[3]"
    assert coll.provenance["format"] == "npy"


def test_npy_stack_fortran_order_and_single_matrix(tmp_path, root, rng):
    stack = np.asfortranarray(rng.standard_normal((3, 4, 2)))
    np.save(tmp_path / "f.npy", stack)
    assert_blocks(ingest_npy_stack(root, "f", tmp_path / "f.npy"), list(stack))
    mat = rng.standard_normal((4, 9)).astype(np.float32)
    np.save(tmp_path / "m.npy", mat)
    assert_blocks(ingest_path(root, "m", tmp_path / "m.npy"), [mat], np.float32)


def test_npz(tmp_path, root, rng):
    arrays = {"alpha": rng.standard_normal((5, 3)), "beta": rng.standard_normal((5, 8)), "gamma": rng.standard_normal((5, 1))}
    np.savez_compressed(tmp_path / "a.npz", **arrays)
    coll = ingest_path(root, "c", tmp_path / "a.npz")
    assert coll.names == ["alpha", "beta", "gamma"]
    assert_blocks(coll, list(arrays.values()), np.float64)


def test_npy_folder(tmp_path, root, rng):
    folder = tmp_path / "blocks"
    folder.mkdir()
    blocks = {f"b{i:02d}": rng.standard_normal((4, i + 1)).astype(np.float32) for i in range(5)}
    for k, v in blocks.items():
        np.save(folder / f"{k}.npy", v)
    (folder / "notes.txt").write_text("ignored")
    coll = ingest_npy_folder(root, "c", folder)
    assert coll.names == sorted(blocks)
    assert_blocks(coll, [blocks[k] for k in sorted(blocks)], np.float32)
    assert ingest_path(root, "d", folder).fingerprint() == coll.fingerprint()


def test_npy_folder_nan_names_file(tmp_path, root):
    folder = tmp_path / "blocks"
    folder.mkdir()
    np.save(folder / "a.npy", np.ones((2, 2)))
    np.save(folder / "b.npy", np.array([[1.0, np.nan], [0, 0]]))
    with pytest.raises(BlockValidationError, match=r"block 1 \('b'\): contains NaN"):
        ingest_npy_folder(root, "c", folder)
    with pytest.raises(CollectionNotFoundError):
        open_collection(root, "c")


@pytest.mark.parametrize("per", ["tensor", "column"])
def test_safetensors(tmp_path, root, rng, per):
    from safetensors.numpy import save_file

    L = 6
    tensors = {
        "layer0.weight": rng.standard_normal((4, L)).astype(np.float32),
        "layer0.bias": rng.standard_normal(L).astype(np.float32),  # 1-D: skipped
        "layer1.weight": rng.standard_normal((2, 3, L)).astype(np.float32),
        "odd.weight": rng.standard_normal((5, 5)).astype(np.float32),  # 25 not a multiple of 6
    }
    save_file(tensors, str(tmp_path / "m.safetensors"))
    coll = ingest_path(root, "c", tmp_path / "m.safetensors", column_length=L, per=per)
    assert coll.rows == L and coll.dtype == np.float32
    assert sorted(coll.provenance["skipped"]) == ["layer0.bias", "odd.weight"]
    cols = {k: tensors[k].reshape(-1, L).T for k in ("layer0.weight", "layer1.weight")}
    if per == "tensor":
        assert coll.names == ["layer0.weight", "layer1.weight"]
        assert_blocks(coll, [cols["layer0.weight"], cols["layer1.weight"]])
    else:
        expected = [c[:, j : j + 1] for c in cols.values() for j in range(c.shape[1])]
        assert coll.names[:2] == ["layer0.weight:0", "layer0.weight:1"] and coll.n_blocks == 4 + 6
        assert_blocks(coll, expected)


def test_safetensors_bf16_and_f64(tmp_path, root, rng):
    import struct, json

    # hand-written file: a BF16 tensor (not loadable by numpy) must be widened exactly
    values = rng.standard_normal((3, 4)).astype(np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype("<u2")
    header = {"w": {"dtype": "BF16", "shape": [3, 4], "data_offsets": [0, bf16.nbytes]}}
    h = json.dumps(header).encode()
    with open(tmp_path / "b.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + bf16.tobytes())
    coll = ingest_safetensors(root, "b", tmp_path / "b.safetensors", column_length=4)
    expected = (bf16.astype(np.uint32) << 16).view(np.float32).reshape(-1, 4).T
    assert_blocks(coll, [expected], np.float32)

    from safetensors.numpy import save_file

    t = {"a": rng.standard_normal((2, 4)), "b": rng.standard_normal((4, 4)).astype(np.float32)}
    save_file(t, str(tmp_path / "d.safetensors"))
    coll = ingest_safetensors(root, "d", tmp_path / "d.safetensors", column_length=4)
    assert coll.dtype == np.float64
    assert_blocks(coll, [t["a"].reshape(-1, 4).T, t["b"].reshape(-1, 4).T.astype(np.float64)])


def test_hdf5_stack_and_group(tmp_path, root, rng):
    h5py = pytest.importorskip("h5py")
    stack = rng.standard_normal((4, 5, 3)).astype(np.float32)
    a, b = rng.standard_normal((5, 2)), rng.standard_normal((5, 7))
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["stack"] = stack
        g = f.create_group("grp")
        g["a"] = a
        g["b"] = b
    coll = ingest_hdf5(root, "s", tmp_path / "d.h5", dataset="stack")
    assert_blocks(coll, list(stack), np.float32)
    coll = ingest_path(root, "g", tmp_path / "d.h5", dataset="grp")
    assert coll.names == ["grp/a", "grp/b"]
    assert_blocks(coll, [a, b], np.float64)


def test_mat_real_stack_and_complex(tmp_path, root, rng):
    import scipy.io

    x = rng.standard_normal((6, 4))
    s = rng.standard_normal((3, 6, 2)).astype(np.float32)
    z = rng.standard_normal((6, 5)) + 1j * rng.standard_normal((6, 5))
    scipy.io.savemat(tmp_path / "d.mat", {"x": x, "s": s, "z": z})
    assert_blocks(ingest_mat(root, "x", tmp_path / "d.mat", key="x"), [x], np.float64)
    assert_blocks(ingest_mat(root, "s", tmp_path / "d.mat", key="s"), list(s), np.float32)
    coll = ingest_path(root, "z", tmp_path / "d.mat", key="z")
    assert coll.rows == 12
    assert_blocks(coll, [np.vstack([z.real, z.imag])], np.float64)
    with pytest.raises(BlockValidationError, match="stack_complex"):
        ingest_mat(root, "z2", tmp_path / "d.mat", key="z", stack_complex=False)


def test_mat_mimo_layout(tmp_path, root, rng):
    import scipy.io

    nrb, nr, nt, nc, users = 7, 2, 3, 2, 4
    h = rng.standard_normal((users, nrb, nr, nt, nc)) + 1j * rng.standard_normal((users, nrb, nr, nt, nc))
    scipy.io.savemat(tmp_path / "mimo.mat", {"H": h})
    coll = ingest_mat(root, "m", tmp_path / "mimo.mat", key="H", layout="mimo")
    assert coll.rows == 2 * nr * nt * nc and coll.n_blocks == users
    assert list(coll.widths) == [nrb] * users
    for u in range(users):
        block = mimo_block(h[u])
        assert block.shape == (nr * nt * nc, nrb)
        # column k is resource block k; row (r, t, c) in C order
        assert block[(1 * nt + 2) * nc + 1, 5] == h[u, 5, 1, 2, 1]
        np.testing.assert_array_equal(coll.block(u), np.vstack([block.real, block.imag]))


def test_mat_v73_through_h5py(tmp_path, root, rng):
    h5py = pytest.importorskip("h5py")
    z = rng.standard_normal((5, 3)) + 1j * rng.standard_normal((5, 3))
    path = tmp_path / "v73.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        comp = np.empty(z.T.shape, dtype=[("real", "<f8"), ("imag", "<f8")])
        comp["real"], comp["imag"] = z.real.T, z.imag.T  # MATLAB's column-major on disk
        f["z"] = comp
    head = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2026 HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(head.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM")
    coll = ingest_mat(root, "z", path, key="z")
    assert_blocks(coll, [np.vstack([z.real, z.imag])], np.float64)


def test_zarr_array_source(tmp_path, root, rng):
    import zarr

    stack = rng.standard_normal((5, 4, 3)).astype(np.float32)
    src = zarr.create_array(store=str(tmp_path / "src.zarr"), shape=stack.shape, chunks=(2, 4, 3), dtype=stack.dtype)
    src[...] = stack
    coll = ingest_zarr_array(root, "c", src)
    assert_blocks(coll, list(stack), np.float32)
    coll = ingest_path(root, "d", tmp_path / "src.zarr")
    assert coll.names[0] == "src[0]"
    assert_blocks(coll, list(stack), np.float32)


def test_ingest_path_rejects_unknown_suffix(tmp_path, root):
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(ValueError, match="unknown source format"):
        ingest_path(root, "c", tmp_path / "x.csv")
