"""Architecture summaries of AlexNet and VGG-16, as in Tables 1 and 2 of the seed report.

torchsummary style: a forward hook on every module records a row when that module's
forward pass *finishes*; rows are numbered in that order ("Conv2d-1", "ReLU-2", ...).
``nn.Sequential`` containers and the model itself give no row; "Param #" counts a
module's own parameters. Sizes are for one 3x224x224 image of 4-byte floats, in MB = 1024**2 bytes:
Input Size = 3*224*224*4 / MB; Forward/Backward Pass Size = 2 * (sum of every row's output
elements) * 4 / MB (each output is stored for the forward pass and again as its gradient);
Params Size = total params * 4 / MB; Estimated Total Size = the sum of the three.
The models are torchvision's own, built on the ``meta`` device: its tensors have a shape
but no memory, so nothing is allocated, initialised or downloaded.

The seed layout (``seed_layout=True``, the default; declared in ``SEED_LAYOUT``)
reproduces the two ways the seed's tables differ from torchvision's models:

1. The seed's AlexNet wrapped some layers in an ``AlexNet_Block`` container module. A
   hooked container records its own row *after* its children, with the output of its
   last child and no parameters of its own: rows AlexNet_Block-7, -10 and -13 repeat the
   shape of the row before them. They are the same tensors, yet the Forward/Backward Pass
   Size counts them again: 2 * (32,448 + 64,896 + 43,264) * 4 bytes = 1.07 MB extra.
2. Neither table has a row for ``avgpool`` (torchvision's ``AdaptiveAvgPool2d`` between
   features and classifier). ``torch.flatten`` is a function, not a module: never a row.

With both, AlexNet gives 9.38 MB and VGG-16 218.59 MB, as printed in the seed.
``seed_layout=False`` gives the plain torchvision summary (avgpool rows, no blocks).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torchvision
from torch import nn

from labutils.errors import ModelError

ARCHS = ("alexnet", "vgg16")
INPUT_SHAPE = (1, 3, 224, 224)
BYTES_PER_VALUE = 4  # float32
MB = 1024**2

# The seed layout: modules (by torchvision name) that have no row in the seed's tables,
# and modules after which the seed's table has a zero-parameter container row.
SEED_LAYOUT = {
    "alexnet": {"skip": ("avgpool",), "block_after": ("features.5", "features.7", "features.9")},
    "vgg16": {"skip": ("avgpool",), "block_after": ()},
}
SEED_BLOCK_NAME = "AlexNet_Block"


@dataclass(frozen=True)
class SummaryRow:
    """One line of the table: "Conv2d-1", (-1, 64, 55, 55), 23296, 23296."""

    layer: str
    output_shape: tuple[int, ...]  # -1 stands for the batch size
    params: int
    cumulative_params: int


@dataclass(frozen=True)
class SummaryTotals:
    """The lines under the table (sizes in MB, not rounded)."""

    total_params: int
    trainable_params: int
    non_trainable_params: int
    input_size_mb: float
    forward_backward_pass_size_mb: float
    params_size_mb: float
    estimated_total_size_mb: float


class _Layer(NamedTuple):
    """What a forward hook saw: torchvision's module name ("features.0") and its row's content."""

    name: str
    kind: str  # the module's class name: "Conv2d"
    output_shape: tuple[int, ...]
    params: int
    trainable: int


def _hooked_layers(arch: str) -> list[_Layer]:
    """Run torchvision's model once on ``meta``; return one _Layer per module, in the order they finished."""
    if arch not in ARCHS:
        raise ModelError(f"unknown model {arch!r}: choose 'alexnet' or 'vgg16'")
    with torch.device("meta"):
        model = getattr(torchvision.models, arch)(weights=None).eval()
    layers: list[_Layer] = []

    def record(name: str) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            own = list(module.parameters(recurse=False))  # not the children's
            layers.append(_Layer(name, type(module).__name__, (-1, *output.shape[1:]),
                                 sum(p.numel() for p in own), sum(p.numel() for p in own if p.requires_grad)))
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in model.named_modules()
               if module is not model and not isinstance(module, (nn.Sequential, nn.ModuleList))]
    try:
        with torch.no_grad():
            model(torch.empty(INPUT_SHAPE, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return layers


def _summary(arch: str, seed_layout: bool) -> tuple[list[SummaryRow], SummaryTotals]:
    """Rows and totals for one model; ``seed_layout`` applies SEED_LAYOUT."""
    layers = _hooked_layers(arch)
    if seed_layout:
        skip, block_after = SEED_LAYOUT[arch]["skip"], SEED_LAYOUT[arch]["block_after"]
        seed_layers = []
        for layer in layers:
            if layer.name not in skip:
                seed_layers.append(layer)
            if layer.name in block_after:  # the container's row: its last child's output, no params
                seed_layers.append(_Layer(layer.name, SEED_BLOCK_NAME, layer.output_shape, 0, 0))
        layers = seed_layers
    rows, total = [], 0
    for number, layer in enumerate(layers, start=1):
        total += layer.params
        rows.append(SummaryRow(f"{layer.kind}-{number}", layer.output_shape, layer.params, total))
    trainable = sum(layer.trainable for layer in layers)
    output_values = sum(math.prod(layer.output_shape[1:]) for layer in layers)  # for a batch of one
    input_mb = math.prod(INPUT_SHAPE) * BYTES_PER_VALUE / MB
    pass_mb = 2 * output_values * BYTES_PER_VALUE / MB
    params_mb = total * BYTES_PER_VALUE / MB
    totals = SummaryTotals(total, trainable, total - trainable,
                           input_mb, pass_mb, params_mb, input_mb + pass_mb + params_mb)
    return rows, totals


def summary_rows(arch: str, *, seed_layout: bool = True) -> list[SummaryRow]:
    """The table's rows for "alexnet" or "vgg16"."""
    return _summary(arch, seed_layout)[0]


def summary_totals(arch: str, *, seed_layout: bool = True) -> SummaryTotals:
    """Parameter counts and memory estimates (MB) for "alexnet" or "vgg16"."""
    return _summary(arch, seed_layout)[1]


def summary_table(arch: str, *, seed_layout: bool = True) -> str:
    """The summary as printed text: one aligned line per layer, then the totals."""
    rows, totals = _summary(arch, seed_layout)
    rule, double = "-" * 84, "=" * 84
    lines = [rule, f"{'Layer (Type)':<24}{'Output Shape':<24}{'Param #':>14}{'Cumulative Param #':>22}", double]
    for row in rows:
        shape = "[" + ", ".join(str(n) for n in row.output_shape) + "]"
        lines.append(f"{row.layer:<24}{shape:<24}{row.params:>14,}{row.cumulative_params:>22,}")
    counts = [("Total Params:", totals.total_params), ("Trainable Params:", totals.trainable_params),
              ("Non-trainable Params:", totals.non_trainable_params)]
    sizes = [("Input Size:", totals.input_size_mb),
             ("Forward/Backward Pass Size:", totals.forward_backward_pass_size_mb),
             ("Params Size:", totals.params_size_mb), ("Estimated Total Size:", totals.estimated_total_size_mb)]
    lines += [double, *(f"{label:<30}{n:,}" for label, n in counts), rule,
              *(f"{label:<30}{mb:.2f} MB" for label, mb in sizes), rule]
    return "\n".join(lines)


def print_summary(arch: str, *, seed_layout: bool = True) -> None:
    """Print ``summary_table(arch)``."""
    print(summary_table(arch, seed_layout=seed_layout))
