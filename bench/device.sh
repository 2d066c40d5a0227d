#!/usr/bin/env bash
# The GPU run of issue 12, for the `device` tool (one H100/H200, its own torch, no internet):
#   run(command="bash bench/device.sh", carry=["wheels"], timeout_s=540)
# `wheels/` (git-ignored) holds the peers' wheels, made here with:
#   pip download --no-deps captum==0.9.0 torchcam==0.5.0 ttach==0.0.3 -d wheels
#   pip wheel --no-deps grad-cam==1.5.7 -w wheels          # an sdist on PyPI
# pytorch-grad-cam also imports cv2, scipy and sklearn: too large to carry (64 MiB); where the device lacks them
# it is left out and the report says so. Everything goes to $OUT (the tool brings it back).
set -uo pipefail
OUT="${OUT:-out}"
mkdir -p "$OUT"
PEERS_DIR="$(mktemp -d)"
pip install -q --no-index --no-deps --target "$PEERS_DIR" wheels/*.whl > "$OUT/pip.log" 2>&1 || cat "$OUT/pip.log"
export PYTHONPATH="$PEERS_DIR${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
python -c "import torch, sys; print(torch.__version__, torch.version.cuda, sys.version.split()[0])" >> "$OUT/gpu.txt"
# TF32: the benchmark leaves PyTorch's defaults (cuDNN TF32 on) and reports the map error with TF32 on and off.
timeout 480 python bench/bench.py --device cuda --without-missing-peers --reps 7 --out "$OUT/gpu.md" \
    > "$OUT/bench.log" 2>&1
echo "bench exit status $?" >> "$OUT/bench.log"
tail -n 60 "$OUT/bench.log"
