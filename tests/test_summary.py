"""Tables 1 and 2 of the seed report, rebuilt from torchvision's AlexNet and VGG-16."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from labutils import summary
from labutils.errors import LabError

ARCHS = ["alexnet", "vgg16"]
MB = 1024**2


SEED_TABLES = Path(__file__).resolve().parent / "data" / "seed_tables.json"  # the seed's Tables 1 and 2, as facts


@pytest.fixture(scope="module")
def seed() -> dict:
    return json.loads(SEED_TABLES.read_text(encoding="utf-8"))


def _as_dicts(rows: list[summary.SummaryRow]) -> list[dict]:
    return [{"layer": r.layer, "output_shape": list(r.output_shape), "params": r.params,
             "cumulative_params": r.cumulative_params} for r in rows]


def _parse_table(text: str) -> tuple[list[dict], dict[str, str]]:
    """Read the printed table back: its layer rows, and the "Label:  value" lines under it."""
    rows, totals = [], {}
    row_re = re.compile(r"^(\S+)\s+\[([-\d, ]+)\]\s+([\d,]+)\s+([\d,]+)$")
    total_re = re.compile(r"^([A-Za-z/ -]+):\s+(\S+(?: MB)?)$")
    for line in text.splitlines():
        if m := row_re.match(line):
            rows.append({"layer": m[1], "output_shape": [int(n) for n in m[2].split(",")],
                         "params": int(m[3].replace(",", "")), "cumulative_params": int(m[4].replace(",", ""))})
        elif m := total_re.match(line):
            totals[m[1]] = m[2]
    return rows, totals


@pytest.mark.parametrize("arch", ARCHS)
def test_rows_equal_the_seed_table_row_by_row(arch: str, seed: dict) -> None:
    rows = summary.summary_rows(arch)
    assert all(isinstance(r.output_shape, tuple) for r in rows)
    assert _as_dicts(rows) == seed[arch]["rows"]


@pytest.mark.parametrize("arch", ARCHS)
def test_totals_equal_the_seed_when_rounded(arch: str, seed: dict) -> None:
    t = summary.summary_totals(arch)
    expected = seed[arch]
    assert (t.total_params, t.trainable_params, t.non_trainable_params) == (
        expected["total_params"], expected["trainable_params"], expected["non_trainable_params"])
    for field in ("input_size_mb", "forward_backward_pass_size_mb", "params_size_mb", "estimated_total_size_mb"):
        assert f"{getattr(t, field):.2f}" == f"{expected[field]:.2f}", field
    assert t.input_size_mb == 3 * 224 * 224 * 4 / MB
    assert t.params_size_mb == expected["total_params"] * 4 / MB
    assert t.estimated_total_size_mb == pytest.approx(t.input_size_mb + t.forward_backward_pass_size_mb
                                                      + t.params_size_mb)


@pytest.mark.parametrize("arch", ARCHS)
def test_printed_table_reads_back_as_the_seed(arch: str, seed: dict, capsys: pytest.CaptureFixture) -> None:
    text = summary.summary_table(arch)
    assert text == summary.summary_table(arch)  # deterministic
    assert re.search(r"Layer \(Type\)\s+Output Shape\s+Param #\s+Cumulative Param #", text)
    rows, totals = _parse_table(text)
    assert rows == seed[arch]["rows"]
    expected = seed[arch]
    assert totals == {
        "Total Params": f"{expected['total_params']:,}",
        "Trainable Params": f"{expected['trainable_params']:,}",
        "Non-trainable Params": f"{expected['non_trainable_params']:,}",
        "Input Size": f"{expected['input_size_mb']:.2f} MB",
        "Forward/Backward Pass Size": f"{expected['forward_backward_pass_size_mb']:.2f} MB",
        "Params Size": f"{expected['params_size_mb']:.2f} MB",
        "Estimated Total Size": f"{expected['estimated_total_size_mb']:.2f} MB",
    }
    assert len({line.index("[") for line in text.splitlines() if line.endswith(tuple("0123456789"))
                and "[" in line}) == 1  # the shape column is aligned
    summary.print_summary(arch)
    assert capsys.readouterr().out == text + "\n"


# Output elements (batch of one) that the plain layout has and the seed's has not, and vice versa.
PLAIN_AVGPOOL = {"alexnet": (-1, 256, 6, 6), "vgg16": (-1, 512, 7, 7)}
SEED_BLOCK_VALUES = {"alexnet": 192 * 13 * 13 + 384 * 13 * 13 + 256 * 13 * 13, "vgg16": 0}


@pytest.mark.parametrize("arch", ARCHS)
def test_plain_layout_is_torchvision_as_is(arch: str, seed: dict) -> None:
    plain = summary.summary_rows(arch, seed_layout=False)
    kinds = [r.layer.rsplit("-", 1)[0] for r in plain]
    assert [int(r.layer.rsplit("-", 1)[1]) for r in plain] == list(range(1, len(plain) + 1))
    assert "AlexNet_Block" not in kinds
    assert kinds.count("AdaptiveAvgPool2d") == 1
    pool = plain[kinds.index("AdaptiveAvgPool2d")]
    assert (pool.output_shape, pool.params) == (PLAIN_AVGPOOL[arch], 0)
    # Same layers as the seed's table, once the block rows are dropped and avgpool put before the classifier.
    seed_kinds = [r["layer"].rsplit("-", 1)[0] for r in seed[arch]["rows"] if "AlexNet_Block" not in r["layer"]]
    last_pool = max(i for i, k in enumerate(seed_kinds) if k == "MaxPool2d")
    assert kinds == seed_kinds[: last_pool + 1] + ["AdaptiveAvgPool2d"] + seed_kinds[last_pool + 1:]
    plain_t, seed_t = summary.summary_totals(arch, seed_layout=False), summary.summary_totals(arch)
    assert plain_t.total_params == seed_t.total_params == seed[arch]["total_params"]
    extra_values = SEED_BLOCK_VALUES[arch] - (PLAIN_AVGPOOL[arch][1] * PLAIN_AVGPOOL[arch][2] * PLAIN_AVGPOOL[arch][3])
    assert seed_t.forward_backward_pass_size_mb - plain_t.forward_backward_pass_size_mb == pytest.approx(
        2 * extra_values * 4 / MB)
    assert "AdaptiveAvgPool2d-" in summary.summary_table(arch, seed_layout=False)


def _hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_no_hooks_remain_after_a_call_or_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[nn.Module] = []
    real_alexnet = torchvision.models.alexnet

    def alexnet(**kwargs) -> nn.Module:
        built.append(real_alexnet(**kwargs))
        return built[-1]

    monkeypatch.setattr(torchvision.models, "alexnet", alexnet)
    assert len(summary.summary_rows("alexnet")) == 23
    assert len(built) == 1 and _hooks_left(built[0]) == 0

    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("broken layer")

    def broken_alexnet(**kwargs) -> nn.Module:
        model = alexnet(**kwargs)
        model.classifier[1] = Broken()
        return model

    monkeypatch.setattr(torchvision.models, "alexnet", broken_alexnet)
    with pytest.raises(RuntimeError, match="broken layer"):
        summary.summary_rows("alexnet")
    assert len(built) == 2 and _hooks_left(built[1]) == 0
    assert not torch.nn.modules.module._global_forward_hooks


@pytest.mark.parametrize("call", [summary.summary_rows, summary.summary_totals, summary.summary_table,
                                  summary.print_summary])
def test_unknown_arch_says_which_are_known(call) -> None:
    with pytest.raises(LabError, match=r"unknown model 'resnet50': choose 'alexnet' or 'vgg16'"):
        call("resnet50")
