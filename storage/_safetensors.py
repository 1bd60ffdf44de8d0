"""safetensors support: header parser and validation, tensor reader, dtype conversions, writer and ingest stream.

Parsed directly (header + memory-mapped tensor bytes), which also handles bfloat16
without any framework.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ._stream import NamedBlock, Passthrough
from .errors import SourceFormatError

_ST_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,  # widened to float32 below
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


#: Largest safetensors JSON header accepted (the format's own limit is 100 MB).
MAX_SAFETENSORS_HEADER = 100 * 2**20
#: Bytes per element of every safetensors dtype (validation also covers dtypes not ingested).
_ST_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict, int]:
    """Parse and validate a safetensors header.

    Every tensor must declare a known dtype, a shape of non-negative integers and
    ``data_offsets`` that lie inside the file's data section, span exactly
    ``prod(shape) * itemsize`` bytes and do not overlap another tensor.

    Returns
    -------
    tensors : dict
        name -> {"dtype", "shape", "data_offsets"} in file order (``__metadata__`` removed).
    data_start : int
        Byte offset of the tensor data.

    Raises
    ------
    SourceFormatError
        Naming the file, the tensor and the problem (truncated file, header over
        :data:`MAX_SAFETENSORS_HEADER` or beyond the file, not a JSON object, bad
        dtype/shape/offsets, overlapping tensors).
    """
    size = os.path.getsize(path)

    def bad(problem: str) -> SourceFormatError:
        return SourceFormatError(f"{path}: invalid safetensors file: {problem}")

    if size < 8:
        raise bad(f"{size} bytes, shorter than the 8-byte header length")
    with open(path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        if hlen > MAX_SAFETENSORS_HEADER:
            raise bad(f"header declares {hlen} bytes, over the {MAX_SAFETENSORS_HEADER}-byte limit")
        if hlen > size - 8:
            raise bad(f"header declares {hlen} bytes but the file has only {size - 8} after the length")
        raw = f.read(hlen)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise bad(f"header is a JSON {type(header).__name__}, not an object")
    header.pop("__metadata__", None)
    data_size = size - 8 - hlen
    spans = []
    for name, info in header.items():
        where = f"tensor {name!r}"
        if not isinstance(info, dict):
            raise bad(f"{where}: entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _ST_ITEMSIZE:
            raise bad(f"{where}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise bad(f"{where}: shape {shape!r} is not a list of non-negative integers")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise bad(f"{where}: data_offsets {offsets!r} is not a pair of integers")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise bad(f"{where}: data_offsets [{begin}, {end}] outside the {data_size}-byte data section")
        nbytes = _ST_ITEMSIZE[dtype]
        for d in shape:  # Python ints: no overflow, whatever the header claims
            nbytes *= d
        if end - begin != nbytes:
            raise bad(f"{where}: data_offsets span {end - begin} bytes but shape {shape} x {dtype} needs {nbytes}")
        spans.append((begin, end, name))
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise bad(f"tensors {n0!r} [{b0}, {e0}] and {n1!r} [{b1}, {e1}] overlap")
    ordered = dict(sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]))
    return ordered, 8 + hlen


#: safetensors dtypes that are cut into column blocks; any other is kept as it is.
ST_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def safetensors_block_problem(info: dict, column_length: int) -> str | None:
    """Why a safetensors tensor cannot be cut into columns of *column_length* (None: it can).

    The reasons are short phrases shown at ingest and kept in the layout record.
    """
    dtype, shape = info["dtype"], list(info["shape"])
    size = 1
    for d in shape:
        size *= int(d)
    if dtype not in ST_FLOAT_DTYPES:
        return f"non-float dtype {dtype}"
    if len(shape) == 0:
        return "scalar"
    if len(shape) == 1:
        return "1-D (bias or norm)"
    if size == 0:
        return "empty"
    if size % column_length:
        return f"size not a multiple of the column length {column_length}"
    return None


def _load_tensor(path: Path, info: dict, data_start: int) -> np.ndarray:
    dtype = _ST_DTYPES.get(info["dtype"])
    if dtype is None:
        raise ValueError(f"{path}: tensor dtype {info['dtype']} is not supported")
    begin, end = info["data_offsets"]
    shape = tuple(info["shape"])
    if end == begin:
        return np.zeros(shape, dtype=dtype)
    arr = np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r", offset=data_start + begin, shape=shape)
    if info["dtype"] == "BF16":
        # bfloat16 is the upper half of a float32
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return arr


def _raw_tensor_bytes(path: Path, info: dict, data_start: int) -> Any:
    begin, end = info["data_offsets"]
    if end == begin:
        return b""
    return np.memmap(path, dtype=np.uint8, mode="r", offset=data_start + begin, shape=(end - begin,))


def _safetensors_stream(path: Path, column_length: int, per: str, skipped: list[str], layout: list[dict]) -> Iterator[NamedBlock]:
    """Blocks of the tensors that can be cut into columns, passthrough items for the rest.

    *layout* receives, in file order, one record per tensor: its name, safetensors
    dtype and shape, and either ``{"kind": "columns", "column_length", "blocks": [first,
    count]}`` (block indices in the collection) or ``{"kind": "passthrough", "reason"}``.
    """
    tensors, data_start = read_safetensors_header(path)
    n_blocks = 0
    for key, info in tensors.items():
        shape = list(info["shape"])
        record = {"name": key, "dtype": info["dtype"], "shape": shape}
        problem = safetensors_block_problem(info, column_length)
        if problem:
            skipped.append(key)
            layout.append({**record, "kind": "passthrough", "reason": problem})
            yield key, Passthrough(_raw_tensor_bytes(path, info, data_start), {"tensor": key, "dtype": info["dtype"], "shape": shape, "reason": problem}), None
            continue
        t = _load_tensor(path, info, data_start)
        # consecutive column_length elements (C order) become one column
        cols = t.reshape(-1, column_length).T
        count = 1 if per == "tensor" else int(cols.shape[1])
        layout.append({**record, "kind": "columns", "column_length": column_length, "blocks": [n_blocks, count]})
        n_blocks += count
        if per == "tensor":
            yield key, cols, {"tensor": key, "shape": shape, "dtype": info["dtype"]}
        else:
            for j in range(cols.shape[1]):
                yield f"{key}:{j}", cols[:, j : j + 1], None
        del t, cols


def safetensors_metadata(path: str | os.PathLike) -> dict:
    """The ``__metadata__`` object of a safetensors header ({} if absent or not string-valued)."""
    with open(path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        if hlen > MAX_SAFETENSORS_HEADER:
            return {}
        try:
            header = json.loads(f.read(hlen))
        except ValueError:
            return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        return {}
    return meta


def safetensors_values(raw: bytes, dtype: str, shape: Sequence[int]) -> np.ndarray:
    """A tensor's little-endian bytes as a numpy array (BF16 widened exactly to float32)."""
    if dtype not in _ST_DTYPES:
        raise ValueError(f"safetensors dtype {dtype} has no numpy equivalent")
    arr = np.frombuffer(raw, dtype=np.dtype(_ST_DTYPES[dtype]).newbyteorder("<")).reshape(tuple(shape))
    if dtype == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(np.dtype(_ST_DTYPES[dtype]), copy=False)


def to_safetensors_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    """Float values cast to a floating safetensors dtype, little-endian.

    BF16 gives the uint16 bit patterns, rounded to nearest even; values that came from
    a bfloat16/float16 tensor (stored exactly in a float32 collection) come back bit for bit.
    """
    if dtype == "BF16":
        bits = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
    if dtype not in ST_FLOAT_DTYPES:
        raise ValueError(f"cannot cast reconstructed values to non-float dtype {dtype}")
    return np.asarray(values).astype(np.dtype(_ST_DTYPES[dtype]).newbyteorder("<"))


def write_safetensors(path: str | os.PathLike, entries: Sequence[dict], data_of: Any, metadata: dict | None = None) -> None:
    """Write a safetensors file, streaming one tensor at a time (atomically: temp file + rename).

    Parameters
    ----------
    entries : sequence of dict
        ``{"name", "dtype" (safetensors code, e.g. "F32"), "shape"}`` in file order.
    data_of : callable
        ``data_of(entry) -> bytes`` (or a uint8 array): the tensor's little-endian bytes,
        exactly ``prod(shape) * itemsize`` of them.
    metadata : dict of str, optional
        The ``__metadata__`` object.

    Raises
    ------
    ValueError
        An unknown dtype, or bytes of the wrong length for a tensor (named).
    """
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for e in entries:
        if e["dtype"] not in _ST_ITEMSIZE:
            raise ValueError(f"tensor {e['name']!r}: unknown safetensors dtype {e['dtype']!r}")
        nbytes = _ST_ITEMSIZE[e["dtype"]]
        for d in e["shape"]:
            nbytes *= int(d)
        header[e["name"]] = {"dtype": e["dtype"], "shape": [int(d) for d in e["shape"]], "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for e in entries:
                data = data_of(e)
                data = memoryview(data if isinstance(data, (bytes, bytearray)) else np.ascontiguousarray(data).view(np.uint8)).cast("B")
                begin, end = header[e["name"]]["data_offsets"]
                if len(data) != end - begin:
                    raise ValueError(f"tensor {e['name']!r}: {len(data)} bytes of data, shape {e['shape']} x {e['dtype']} needs {end - begin}")
                f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
