"""Plain data across the sandbox wall (labutils.instructor.plain): what the grader accepts from a scoring process."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
import torch

from labutils.instructor.plain import MAX_DEPTH, PlainError, decode, encode


def message(value: object, arrays: list[bytes]) -> bytes:
    header = json.dumps({"value": value, "sizes": [len(a) for a in arrays]}).encode()
    return struct.pack("<Q", len(header)) + header + b"".join(arrays)


def npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def test_values_come_back_as_the_same_plain_types():
    value = {"maps": torch.arange(6.0).reshape(2, 3), 3: (1, 2.5, None, True, "x", [np.int64(0).item()]),
             "flags": torch.tensor([True, False]), "half": torch.ones(2, dtype=torch.float16),
             "array": np.arange(4, dtype=np.int32)}
    back = decode(encode(value))
    assert type(back["maps"]) is torch.Tensor and torch.equal(back["maps"], value["maps"])
    assert back["maps"].dtype == torch.float32 and back["half"].dtype == torch.float16
    assert back["flags"].tolist() == [True, False]
    assert type(back["array"]) is np.ndarray and back["array"].dtype == np.int32
    assert back[3] == (1, 2.5, None, True, "x", [0]) and type(back[3]) is tuple and type(back[3][5]) is list
    back["maps"][0, 0] = 9  # the grader owns writable copies
    assert value["maps"][0, 0] == 0


def test_what_is_not_plain_is_refused_on_the_way_out():
    class Yes(torch.Tensor):
        pass

    with pytest.raises(PlainError, match="subclasses are refused"):
        encode(torch.zeros(2).as_subclass(Yes))
    with pytest.raises(PlainError, match="not plain data"):
        encode(object())
    with pytest.raises(PlainError, match="dtype object"):
        encode(np.array([object()]))
    nested: list = []
    for _ in range(MAX_DEPTH + 2):
        nested = [nested]
    with pytest.raises(PlainError, match="levels"):
        encode(nested)


def test_forged_messages_are_refused_never_unpickled():
    pickled = npy(np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(PlainError):
        decode(message({"t": "tensor", "i": 0, "dtype": "float32", "shape": [1]}, [pickled]))
    floats = npy(np.zeros(3, dtype=np.float32))
    with pytest.raises(PlainError, match="not the float64"):
        decode(message({"t": "tensor", "i": 0, "dtype": "float64", "shape": [3]}, [floats]))
    with pytest.raises(PlainError, match="not the float32 \\[2\\]"):
        decode(message({"t": "tensor", "i": 0, "dtype": "float32", "shape": [2]}, [floats]))
    with pytest.raises(PlainError, match="malformed array"):
        decode(message({"t": "tensor", "i": 0, "dtype": "object", "shape": [3]}, [floats]))
    with pytest.raises(PlainError, match="unknown value kind"):
        decode(message({"t": "function", "v": "os.system"}, []))
    with pytest.raises(PlainError, match="beyond the message"):
        decode(message({"t": "tensor", "i": 0, "dtype": "float32", "shape": [3]}, [floats])[:-5])
    with pytest.raises(PlainError):
        decode(b"PASS" * 100)
    assert torch.equal(decode(message({"t": "tensor", "i": 0, "dtype": "float32", "shape": [3]}, [floats])),
                       torch.zeros(3))
