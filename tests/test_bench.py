"""bench/bench.py keeps working: its quick mode runs, checks every method's map against labutils'
and prints the table; a method whose map differs is refused; --device cuda refuses clearly without CUDA.

Timings are not asserted (the benchmark is not a timed test): only that they are there."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench.py"
METHODS = ["labutils", "labutils shortcut=False", "autograd floor (split by hand)", "Captum LayerGradCam",
           "pytorch-grad-cam GradCAM", "torchcam GradCAM"]


def load_bench():
    spec = importlib.util.spec_from_file_location("labutils_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["labutils_bench"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def table_rows(out: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in out.splitlines()
            if line.startswith("| Grad-CAM") or line.startswith("| Guided Grad-CAM")]


def test_quick_mode_runs_and_every_method_gives_the_same_map():
    done = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for needed in ("machine: ", "torch threads: ", "torch 2.", "torchvision ", "captum ", "grad-cam ", "torchcam ",
                   "date: ", "### AlexNet"):
        assert needed in out, f"{needed!r} missing from the report"
    assert "DIFFERS" not in out and "not timed" not in out
    rows = table_rows(out)
    one = {r[1]: r for r in rows if r[0] == "Grad-CAM, one class"}
    five = {r[1]: r for r in rows if r[0].startswith("Grad-CAM, five classes")}
    guided = {r[1]: r for r in rows if r[0] == "Guided Grad-CAM, one class"}
    assert sorted(one) == sorted(METHODS) and sorted(five) == ["Captum LayerGradCam", "labutils"]  # quick: no more
    assert sorted(guided) == ["labutils", "pytorch-grad-cam GradCAM x GuidedBackpropReLUModel"]
    for row in [*one.values(), *five.values(), *guided.values()]:
        method, same, median_ms, ratio = row[1], row[2], row[3], row[4]
        assert same == "reference" if method == "labutils" else same.startswith("yes ("), row
        if same.startswith("yes ("):
            assert float(same[5:-1]) <= 1e-5, row
        assert float(median_ms) > 0 and re.fullmatch(r"\d+\.\d\dx", ratio), row
    # the labutils rows say whether the target is met and how they compare with Captum
    for row in (one["labutils"], five["labutils"]):
        assert re.fullmatch(r"<= \d\.\d+x: (met|NOT met); \d+% (ahead of|behind) Captum", row[6]), row
    # the explorer's class switch (kept A^k and head pass) is timed in milliseconds against its 5 ms target
    assert re.search(r"\| Explorer class switch .*\| labutils\.cached \| - \| \d+\.\d \| - \| - \| <= 5 ms: (met|NOT met) \|", out)
    assert re.search(r"load average when this model's rounds ended: \d+\.\d\d", out)
    # memory: the no-grad forward and labutils, from fresh processes
    assert re.search(r"\| no-grad forward \| \d+ \| -?\d+\.\d \| 1\.00x", out)
    assert re.search(r"\| labutils \| \d+ \| -?\d+\.\d \| \d\.\d\dx", out)
    # the throughput / bf16 section (the GPU mode's code path, run small on the CPU)
    assert "labutils bf16 autocast" in out and "labutils fp16 autocast" in out
    for low in ("bf16", "fp16"):
        corr = re.search(low + r" autocast maps vs fp32 maps .*Pearson correlation min (\d\.\d+), mean (\d\.\d+)", out)
        assert corr and 0.9 < float(corr.group(1)) <= 1.0, low
    # the lower-precision section: maps' correlations, A^k's error (bf16's 8 bits vs fp16's 11), the perturbed bound
    row = re.search(r"\| 1 \(7\) \| (\d\.\d{4}) \((\d\.\d{4})\) \| (\d\.\d{4}) \((\d\.\d{4})\) \| "
                    r"(\d+\.\d\d)% / (\d+\.\d\d)% \| (\d\.\d{4}) \((\d\.\d{4})\) \|", out)
    assert row, "the bf16 / fp16 precision table is missing"
    bf16_min, _, fp16_min, _, bf16_error, fp16_error, bound, _ = map(float, row.groups())
    assert 0.9 < bf16_min <= 1 and 0.9 < fp16_min <= 1 and 0.5 < bound <= 1
    assert 0 < fp16_error < bf16_error < 2, "bf16 keeps 8 bits of precision, fp16 11: A^k's errors say otherwise"


def test_a_method_whose_map_differs_is_refused():
    bench = load_bench()
    ref = torch.rand(1, 2, 7, 7) + 0.5
    methods = {
        "labutils": bench.Method("labutils", "one class", "labutils", lambda: ref),
        "close": bench.Method("close", "one class", "close", lambda: ref * (1 + 2e-6), "labutils"),
        "wrong": bench.Method("wrong", "one class", "wrong", lambda: ref * 1.001, "labutils"),
        # right overall scale but one of the two maps is off: each map is compared on its own
        "one-map-off": bench.Method("one-map-off", "one class", "one-map-off",
                                    lambda: torch.cat([ref[:, :1], ref[:, 1:] * 1.01], dim=1), "labutils"),
        "final": bench.Method("final", "one class", "final", lambda: ref + 2e-5, "labutils", "abs"),
    }
    bench.check_equal(methods)
    assert methods["close"].equal is True and methods["close"].error < 1e-5
    assert methods["wrong"].equal is False and abs(methods["wrong"].error - 1e-3) < 1e-4
    assert methods["one-map-off"].equal is False
    assert methods["final"].equal is False
    assert methods["labutils"].equal is None  # the reference itself


def test_cuda_mode_refuses_clearly_without_cuda_or_runs_with_it():
    command = [sys.executable, str(BENCH), "--device", "cuda", "--quick", "--no-throughput"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if torch.cuda.is_available():
        assert done.returncode == 0, done.stderr[-3000:]
        assert "device: " in done.stdout and "CPU" not in done.stdout.split("device: ")[1].splitlines()[0]
    else:
        assert done.returncode == 2
        assert "CUDA is not available" in done.stderr and "run without --device cuda" in done.stderr
        assert done.stdout == ""


def test_a_peer_that_does_not_import_is_refused_or_left_out(tmp_path, alexnet):
    """pytorch-grad-cam imports cv2, scipy, sklearn: where one is missing, --without-missing-peers still runs."""
    broken = tmp_path / "torchcam"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('no module named cv2 (a stand-in)')\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "bench.py: torchcam cannot be imported: pip install -e '.[bench]' (or run with --without-missing-peers)"]
    bench = load_bench()
    bench.PEERS["torchcam"] = "torchcam_not_here.methods"
    bench.peer.cache_clear()
    methods = bench.make_methods(alexnet, torch.rand(1, 3, 224, 224), None)
    assert not any(k.startswith("torchcam") for k in methods) and "captum" in methods and "grad-cam" in methods
    assert "left out (they do not import here): torchcam" in bench.header(torch.device("cpu"))
