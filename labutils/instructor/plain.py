"""Plain data across the sandbox wall: values <-> one JSON header and ``.npy`` arrays, never pickles.

The scoring process (inside the sandbox) sends what the student's function returned; the grader reads
it with :func:`decode`, which accepts only what it can rebuild itself: ``None``, ``bool``, ``int``,
``float``, ``str``, tuples, lists and string- or int-keyed dicts of them, and arrays of a numeric or
boolean dtype loaded with ``numpy.load(allow_pickle=False)``. Each array's dtype and shape are checked
against the header; tensors come back as exact ``torch.Tensor`` objects made by the grader. Whatever
else the other side sends (objects, subclasses, pickles, deep nesting, too many bytes) is refused with
:class:`PlainError`.

This module runs on both sides of the wall: it imports only the standard library, numpy and torch.
"""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import numpy as np
import torch

MAX_DEPTH = 16  # nesting of tuples / lists / dicts
MAX_ITEMS = 100_000  # values in one message
MAX_BYTES = 256 * 2**20  # one message, header and arrays together
DTYPES = {"bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64", "complex64",
          "complex128"}  # fmt: skip


class PlainError(ValueError):
    """A value that cannot cross the wall as plain data."""


def _array(value: Any) -> np.ndarray:
    if type(value) is torch.Tensor:
        if value.layout != torch.strided or value.is_quantized or value.device.type == "meta":
            raise PlainError(f"a {value.layout} / {value.device.type} tensor is not plain data; return a dense tensor")
        if value.dtype == torch.bfloat16:
            value = value.float()
        return value.detach().cpu().resolve_conj().resolve_neg().contiguous().numpy()
    if type(value) is np.ndarray:
        return np.ascontiguousarray(value)
    raise PlainError(f"a {type(value).__module__}.{type(value).__qualname__} is not a plain tensor or array "
                     "(subclasses are refused); return a torch.Tensor")


def encode(value: Any) -> bytes:
    """``value`` as one message: header length, JSON header, then the arrays as ``.npy`` files."""
    arrays: list[bytes] = []
    count = 0

    def walk(v: Any, depth: int) -> Any:
        nonlocal count
        count += 1
        if depth > MAX_DEPTH or count > MAX_ITEMS:
            raise PlainError(f"more than {MAX_DEPTH} levels or {MAX_ITEMS} values: not plain data")
        if v is None or type(v) in (bool, int, float, str):
            return v
        if type(v) in (tuple, list):
            return {"t": type(v).__name__, "v": [walk(x, depth + 1) for x in v]}
        if type(v) is dict:
            if not all(type(k) in (str, int) for k in v):
                raise PlainError("a dict with keys other than str or int is not plain data")
            return {"t": "dict", "v": [[k, walk(x, depth + 1)] for k, x in v.items()]}
        if type(v) in (torch.Tensor, np.ndarray):
            a = _array(v)
            if a.dtype.name not in DTYPES:
                raise PlainError(f"an array of dtype {a.dtype} is not plain data")
            buffer = io.BytesIO()
            np.save(buffer, a, allow_pickle=False)
            arrays.append(buffer.getvalue())
            return {"t": "tensor" if type(v) is torch.Tensor else "ndarray", "i": len(arrays) - 1,
                    "dtype": a.dtype.name, "shape": list(a.shape)}
        if isinstance(v, (torch.Tensor, np.ndarray)):
            _array(v)  # raises, naming the subclass
        raise PlainError(f"a {type(v).__module__}.{type(v).__qualname__} is not plain data")

    walked = walk(value, 0)
    header = json.dumps({"value": walked, "sizes": [len(a) for a in arrays]}).encode()
    message = struct.pack("<Q", len(header)) + header + b"".join(arrays)
    if len(message) > MAX_BYTES:
        raise PlainError(f"{len(message)} bytes is more than the {MAX_BYTES} allowed")
    return message


def decode(message: bytes) -> Any:
    """The value of a message made by :func:`encode`; :class:`PlainError` for anything else."""
    if len(message) > MAX_BYTES or len(message) < 8:
        raise PlainError(f"a message of {len(message)} bytes")
    (length,) = struct.unpack("<Q", message[:8])
    try:
        header = json.loads(message[8 : 8 + length])
        sizes = [int(s) for s in header["sizes"]]
        value = header["value"]
    except (ValueError, KeyError, TypeError) as error:
        raise PlainError(f"an unreadable header ({error})") from None
    offsets, start = [], 8 + length
    for size in sizes:
        if size < 0 or start + size > len(message):
            raise PlainError("array sizes beyond the message")
        offsets.append((start, start + size))
        start += size
    count = 0

    def walk(v: Any, depth: int) -> Any:
        nonlocal count
        count += 1
        if depth > MAX_DEPTH or count > MAX_ITEMS:
            raise PlainError("too deep or too many values")
        if v is None or type(v) in (bool, int, float, str):
            return v
        if type(v) is not dict or "t" not in v:
            raise PlainError(f"an unknown value {str(v)[:60]!r}")
        kind = v["t"]
        if kind in ("tuple", "list") and type(v.get("v")) is list:
            items = [walk(x, depth + 1) for x in v["v"]]
            return tuple(items) if kind == "tuple" else items
        if kind == "dict" and type(v.get("v")) is list:
            out = {}
            for pair in v["v"]:
                if type(pair) is not list or len(pair) != 2 or type(pair[0]) not in (str, int):
                    raise PlainError("a malformed dict")
                out[pair[0]] = walk(pair[1], depth + 1)
            return out
        if kind in ("tensor", "ndarray"):
            index, dtype, shape = v.get("i"), v.get("dtype"), v.get("shape")
            if type(index) is not int or not 0 <= index < len(offsets) or dtype not in DTYPES:
                raise PlainError("a malformed array entry")
            first, last = offsets[index]
            try:
                a = np.load(io.BytesIO(message[first:last]), allow_pickle=False)
            except Exception as error:
                raise PlainError(f"an unreadable array ({type(error).__name__}: {error})") from None
            if type(a) is not np.ndarray or a.dtype.name != dtype or list(a.shape) != shape:
                raise PlainError(f"an array that is not the {dtype} {shape} its header says")
            a = np.array(a, copy=True)  # writable, owned by the grader
            return torch.from_numpy(a) if kind == "tensor" else a
        raise PlainError(f"an unknown value kind {str(kind)[:40]!r}")

    return walk(value, 0)
