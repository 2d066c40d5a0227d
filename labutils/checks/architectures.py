"""Notebook 01's exercise: one row of Tables 1 and 2 worked out by hand, from a layer's description."""

from __future__ import annotations

import math
import numbers
from typing import Optional

import torch
from torch import nn

from ..exercise import Case, Exercise
from ..summary import BYTES_PER_VALUE, MB
from ._common import diagnosis, pick

NOTEBOOK = "01_architectures.ipynb"


def module_of(spec: dict, in_shape: tuple) -> nn.Module:
    """The torch module a spec describes (built on the meta device: shapes only, no memory)."""
    kind = spec["kind"]
    if kind == "conv":
        return nn.Conv2d(in_shape[0], spec["out_channels"], spec["kernel"], spec.get("stride", 1),
                         spec.get("padding", 0), device="meta")  # fmt: skip
    if kind == "maxpool":
        return nn.MaxPool2d(spec["kernel"], spec.get("stride", spec["kernel"]), spec.get("padding", 0))
    if kind == "linear":
        return nn.Linear(math.prod(in_shape), spec["out_features"], device="meta")
    return nn.ReLU()


def layer_cost(spec: dict, in_shape: tuple) -> tuple[tuple[int, ...], int, float]:
    """(output shape without the batch, parameters, MB of the row's Forward/Backward Pass Size), by running it."""
    module = module_of(spec, in_shape)
    x = torch.empty(1, *in_shape, device="meta")
    if spec["kind"] == "linear":
        x = x.flatten(1)
    out = tuple(module(x).shape[1:])
    params = sum(p.numel() for p in module.parameters())
    return out, params, 2 * math.prod(out) * BYTES_PER_VALUE / MB


def cost_cases(g: Optional[torch.Generator]) -> list[Case]:
    """Rows of Tables 1 and 2, a non-square input, and fresh layers of the same kinds for the grader."""
    if g is None:
        rows = [
            ("AlexNet's Conv2d-1", {"kind": "conv", "out_channels": 64, "kernel": 11, "stride": 4, "padding": 2}, (3, 224, 224)),
            ("AlexNet's MaxPool2d-3", {"kind": "maxpool", "kernel": 3, "stride": 2}, (64, 55, 55)),
            ("VGG-16's MaxPool2d-5, stride left out", {"kind": "maxpool", "kernel": 2}, (64, 224, 224)),
            ("VGG-16's Conv2d-1", {"kind": "conv", "out_channels": 64, "kernel": 3, "stride": 1, "padding": 1}, (3, 224, 224)),
            ("VGG-16's Linear-32", {"kind": "linear", "out_features": 4096}, (512, 7, 7)),
            ("a ReLU", {"kind": "relu"}, (256, 13, 13)),
            ("a conv on a non-square input", {"kind": "conv", "out_channels": 32, "kernel": 5, "stride": 2, "padding": 1}, (16, 37, 50)),
        ]
    else:
        k, s = pick(g, 0, 1, 8), pick(g, 0, 1, 4)
        c, h, w = pick(g, 0, 1, 64), pick(g, 0, 16, 80), pick(g, 0, 16, 80)
        rows = [
            ("a conv", {"kind": "conv", "out_channels": pick(g, 0, 1, 128), "kernel": k, "stride": s,
                        "padding": pick(g, 0, 0, k)}, (c, h, w)),
            ("a max pooling", {"kind": "maxpool", "kernel": pick(g, 0, 2, 4), "stride": pick(g, 0, 1, 3)}, (c, h, w)),
            ("a max pooling, stride left out", {"kind": "maxpool", "kernel": pick(g, 0, 2, 5)}, (c, h, w)),
            ("a linear layer", {"kind": "linear", "out_features": pick(g, 0, 1, 500)}, (c, pick(g, 0, 1, 8), pick(g, 0, 1, 8))),
            ("a ReLU", {"kind": "relu"}, (c, h, w)),
        ]  # fmt: skip
    return [Case(f"{name}: {spec} on {in_shape}", (spec, in_shape)) for name, spec, in_shape in rows]


def _bytes_scales(out: tuple, params: int) -> dict[float, str]:
    mb = 2 * math.prod(out) * BYTES_PER_VALUE / MB
    return {
        mb / 2: "counted once: the table stores each output twice (value and gradient)",
        mb / BYTES_PER_VALUE: "counted values, not bytes: each float32 is 4 bytes",
        mb * MB / 1e6: "MB of 1,000,000 bytes: the tables use MB = 1024² bytes",
        mb * MB: "bytes, not MB: divide by 1024²",
        2 * params * BYTES_PER_VALUE / MB: "you counted the parameters: the pass size counts the row's output values",
    }


def _integer(value: object) -> bool:
    """An int, or a numpy / 0-d torch integer (np.prod gives int64): not a bool, not a float."""
    if isinstance(value, torch.Tensor):
        return value.ndim == 0 and not value.is_floating_point() and value.dtype != torch.bool
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def diagnose_cost(case: Case, got: object) -> Optional[str]:
    spec, in_shape = case.args
    out, params, mb = layer_cost(spec, in_shape)
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        return f"wrong type: return a tuple (output shape, parameters, MB), got {type(got).__name__}"
    got_out, got_params, got_mb = got
    if isinstance(got_out, torch.Size):
        got_out = tuple(got_out)
    if not isinstance(got_out, (tuple, list)) or not all(_integer(v) for v in got_out):
        return f"wrong type: the output shape should be a tuple of ints, e.g. {out}, got {got_out!r}"
    got_out = tuple(int(v) for v in got_out)  # numpy integers (np.prod, arrays) are integers too
    if tuple(got_out) != out:
        hint = ""
        if spec["kind"] in ("conv", "maxpool") and isinstance(got_out, (tuple, list)) and len(got_out) == 3:
            k, s, p = spec["kernel"], spec.get("stride", spec["kernel"] if spec["kind"] == "maxpool" else 1), spec.get("padding", 0)
            no_pad = tuple(int(v) for v in (out[0], (in_shape[1] - k) // s + 1, (in_shape[2] - k) // s + 1))
            ceil = tuple(int(v) for v in (out[0], -(-(in_shape[1] + 2 * p - k) // s) + 1, -(-(in_shape[2] + 2 * p - k) // s) + 1))
            stride_1 = tuple(int(v) for v in (out[0], in_shape[1] + 2 * p - k + 1, in_shape[2] + 2 * p - k + 1))
            if spec["kind"] == "maxpool" and "stride" not in spec and tuple(got_out) == stride_1:
                hint = " — the spec gives no stride, and you used 1: see the table of spec kinds for a max " \
                       "pooling's default stride"
            elif tuple(got_out) == no_pad and p:
                hint = f" — you left out the padding: (H + 2·{p} - {k}) // {s} + 1"
            elif tuple(got_out) == ceil:
                hint = " — you rounded up: the size is floor((H + 2p - k) / s) + 1"
            elif tuple(got_out)[0] != out[0]:
                hint = " — the number of channels is the number of filters (out_channels); a pooling keeps the channels"
        return f"wrong output shape: expected {out}, got {tuple(got_out) if isinstance(got_out, (tuple, list)) else got_out!r}{hint}"
    if not _integer(got_params):
        return f"wrong type: the number of parameters should be an integer, got {type(got_params).__name__}"
    got_params = int(got_params)
    if got_params != params:
        kind, hint = spec["kind"], ""
        if kind == "conv":
            k, n_out = spec["kernel"], spec["out_channels"]
            if got_params == params - n_out:
                hint = f" — the bias is missing: one per filter, + {n_out}"
            elif got_params == n_out * k * k + n_out:
                hint = f" — each filter spans all {in_shape[0]} input channels: out · in · k · k + out"
        elif kind == "linear":
            if got_params == params - spec["out_features"]:
                hint = f" — the bias is missing: one per output, + {spec['out_features']}"
        elif params == 0:
            hint = f" — a {kind} has no weights"
        return f"wrong number of parameters: expected {params:,}, got {got_params:,}{hint}"
    if not isinstance(got_mb, numbers.Real) or isinstance(got_mb, bool):
        return f"wrong type: the MB should be a float, got {type(got_mb).__name__}"
    got_mb = float(got_mb)
    if not math.isclose(got_mb, mb, rel_tol=1e-6, abs_tol=1e-12):
        named = [text for value, text in _bytes_scales(out, params).items() if math.isclose(got_mb, value, rel_tol=1e-6)]
        return f"wrong MB: expected {mb:.6g}, got {got_mb:.6g}" + (f" — {named[0]}" if named else "")
    return None


LAYER_COST = Exercise(
    "layer_cost", NOTEBOOK, "my_layer_cost", (), cost_cases, diagnosis("my_layer_cost", diagnose_cost)
)

VERIFIED = {
    "layer_cost": "output shape, parameters and Forward/Backward Pass MB match PyTorch's own layers for rows of "
    "Tables 1 and 2 (conv, max pooling with and without its stride given, linear, ReLU) and a conv on a non-square "
    "input",
}
