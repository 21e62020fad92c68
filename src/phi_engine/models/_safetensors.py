"""A reader of ``.safetensors`` files (Hugging Face's weight format) in plain numpy.

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length,
then a JSON header mapping each tensor name to its dtype, shape and ``[begin, end)`` byte offsets
into the data that follows. The file is memory-mapped, so reading is instant and the arrays share
the page cache.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from pathlib import Path

import numpy as np

__all__ = ["read_safetensors"]


_SAFETENSORS_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Read a ``.safetensors`` file into read-only numpy arrays backed by a memory map.

    Args:
        path: The file.

    Returns:
        Every tensor by name (the ``__metadata__`` entry is skipped), in the file's dtype.

    Raises:
        ValueError: a malformed header, an unsupported dtype, or offsets that do not match.
    """
    with path.open("rb") as f:
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if len(data) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise ValueError(f"{path}: header length {header_len} exceeds the file")
    header = json.loads(data[8 : 8 + header_len])
    body = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
        shape = tuple(int(d) for d in info["shape"])
        begin, end = (int(o) for o in info["data_offsets"])
        if end - begin != math.prod(shape) * dtype.itemsize or body + end > len(data):
            raise ValueError(f"{path}: tensor {name!r} has offsets that do not fit its shape")
        count = math.prod(shape)
        tensors[name] = np.frombuffer(data, dtype, count, body + begin).reshape(shape)
    return tensors
