"""Untrusted ingest sources: safetensors headers are validated, .npz members are streamed
or refused, declared sizes are checked against the file, integer casts are lossless."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from storage import BlockValidationError, SourceFormatError, ingest_blocks, ingest_npz, ingest_safetensors, read_safetensors_header


def _safetensors(path, header, data: bytes) -> str:
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data)
    return str(path)


def _two(tmp_path, **override):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.arange(8, dtype=np.float32).reshape(2, 4) + 100
    header = {"a": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]},
              "b": {"dtype": "F32", "shape": [2, 4], "data_offsets": [48, 80]}}
    for k, v in override.items():
        header[k] = v
    return _safetensors(tmp_path / "m.safetensors", header, a.tobytes() + b.tobytes())


def test_valid_file_still_ingests(tmp_path, root):
    coll = ingest_safetensors(root, "c", _two(tmp_path), column_length=4)
    assert coll.n_blocks == 2


@pytest.mark.parametrize("override,needle", [
    ({"a": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 40]}}, "span 40 bytes but shape [3, 4] x F32 needs 48"),
    ({"b": {"dtype": "F32", "shape": [2, 4], "data_offsets": [40, 72]}}, "overlap"),
    ({"b": {"dtype": "F32", "shape": [2, 4], "data_offsets": [48, 4096]}}, "outside the 80-byte data section"),
    ({"a": {"dtype": "F32", "shape": [2**40, 2**22], "data_offsets": [0, 48]}}, "needs 18446744073709551616"),
    ({"a": {"dtype": "F32", "shape": [-3, 4], "data_offsets": [0, 48]}}, "non-negative integers"),
    ({"a": {"dtype": "Q7", "shape": [3, 4], "data_offsets": [0, 48]}}, "unknown dtype"),
    ({"a": [1, 2]}, "not an object"),
    ({"a": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0]}}, "not a pair"),
])
def test_bad_headers_are_refused(tmp_path, root, override, needle):
    path = _two(tmp_path, **override)
    with pytest.raises(SourceFormatError, match="invalid safetensors file") as info:
        ingest_safetensors(root, "c", path, column_length=4)
    assert needle in str(info.value) and "m.safetensors" in str(info.value)


def test_header_not_an_object_or_huge(tmp_path):
    p = tmp_path / "x.safetensors"
    raw = b"[1, 2, 3]"
    p.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(SourceFormatError, match="JSON list, not an object"):
        read_safetensors_header(p)
    p.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    with pytest.raises(SourceFormatError, match="over the .*-byte limit"):
        read_safetensors_header(p)
    p.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(SourceFormatError, match="only 2 after the length"):
        read_safetensors_header(p)
    p.write_bytes(b"\x01\x02")
    with pytest.raises(SourceFormatError, match="shorter than the 8-byte"):
        read_safetensors_header(p)
    p.write_bytes(struct.pack("<Q", 4) + b"\xff{}x")
    with pytest.raises(SourceFormatError, match="not valid JSON"):
        read_safetensors_header(p)


# ---- .npz --------------------------------------------------------------------------------


def test_npz_declared_shape_larger_than_member(tmp_path, root):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (100000, 100000)})
    buf.write(np.ones(16).tobytes())
    with zipfile.ZipFile(tmp_path / "lie.npz", "w") as z:
        z.writestr("x.npy", buf.getvalue())
    with pytest.raises(SourceFormatError, match=r"member 'x': declares shape \(100000, 100000\) float64 \(80000000000 bytes\) but holds 128"):
        ingest_npz(root, "c", tmp_path / "lie.npz")


def test_npz_large_member_is_streamed_not_loaded(tmp_path, root, monkeypatch):
    import storage.ingest as ingest

    monkeypatch.setattr(ingest, "NPZ_MEMORY_BUDGET", 1024)  # force the spill path
    arrays = {"a": np.arange(600.0).reshape(6, 100), "b": np.arange(60.0).reshape(6, 10), "f": np.asfortranarray(np.ones((6, 300)))}
    np.savez_compressed(tmp_path / "a.npz", **arrays)
    coll = ingest_npz(root, "c", tmp_path / "a.npz", chunk_columns=16)
    for i, k in enumerate(arrays):
        np.testing.assert_array_equal(coll.block(i), arrays[k])


@pytest.mark.slow  # measures peak memory in a subprocess
def test_npz_bomb_peak_memory(tmp_path):
    """A ~1 MiB npz expanding to 256 MiB: peak RSS stays far below the expanded size."""
    zeros = tmp_path / "bomb.npz"
    np.savez_compressed(zeros, z=np.zeros((512, 65536)))
    assert zeros.stat().st_size < 2 * 2**20
    code = f"""
import resource, sys
sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parents[2])!r})
import storage.ingest as ingest
ingest.NPZ_MEMORY_BUDGET = 8 * 2**20
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ingest.ingest_npz({str(tmp_path / 'store')!r}, "c", {str(zeros)!r})
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) < 160, out.stdout  # MiB; the data is 256 MiB


def test_int64_beyond_2_53_is_refused(root):
    ok = np.array([[2**53, -(2**53)], [1, 2]], dtype=np.int64)
    np.testing.assert_array_equal(ingest_blocks(root, "ok", [ok]).block(0), ok.astype(np.float64))
    bad = np.array([[2**53 + 1, 0], [1, 2]], dtype=np.int64)
    with pytest.raises(BlockValidationError, match=r"9007199254740993 .*lossless casts only"):
        ingest_blocks(root, "bad", [bad])
    with pytest.raises(BlockValidationError, match="lossless casts only"):
        ingest_blocks(root, "bad", [np.array([[2**63 + 5]], dtype=np.uint64)])


def test_truncated_npy_is_a_clear_error(tmp_path, root):
    from storage import ingest_npy_stack

    p = tmp_path / "s.npy"
    np.save(p, np.ones((4, 3, 5)))
    p.write_bytes(p.read_bytes()[:-40])
    with pytest.raises(SourceFormatError, match="s.npy: not a readable .npy file"):
        ingest_npy_stack(root, "c", p)
