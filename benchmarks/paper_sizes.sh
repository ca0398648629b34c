#!/usr/bin/env bash
# The speed measurements at the paper's sizes, for a machine with an
# accelerator (run from the repository root):
#
#   bash benchmarks/paper_sizes.sh [OUT_DIR]
#
# CIFAR-10 residual nets at ngf = nef = 512, nif = 128, batch 100, 30 / 10
# steps, second x-chain, in float32 (with the PyTorch reference iteration
# beside it when torch is installed), with the CPU plug-in's convolutions
# (`--config.training.cpu_plugin=on`), and in bfloat16; the simple nets of
# Table 1; the compiled memory for 30 and 120 x-steps; a profile. Each JSON line goes to OUT_DIR (default
# runs/bench). The paper's A100 numbers to compare with: 1.594 s (residual),
# 0.201 s (simple). Besides jax, flax, optax, orbax and chex the benchmark
# imports ml_collections and clu (pure-Python wheels; no TensorFlow).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/bench}"
mkdir -p "$out"
py="${PYTHON:-python}"
baseline=none
if "$py" -c 'import torch' 2>/dev/null; then baseline=torch; fi
run() {  # name, then benchmark flags
  local name="$1"; shift
  echo "== $name"
  "$py" benchmarks/train_step.py "$@" | tee "$out/$name.txt"
  tail -n 1 "$out/$name.txt" > "$out/$name.json"
}
run resnet_float32 --config=configs/cifar10.py --iters=10 --noloop \
    --baseline="$baseline" --noratio_table
run resnet_cpu_plugin --config=configs/cifar10.py --iters=10 --noloop \
    --nopeak --config.training.cpu_plugin=on
run resnet_bfloat16 --config=configs/cifar10.py --iters=10 --noloop \
    --config.training.compute_dtype=bfloat16
run simple_float32 --config=configs/cifar10_simple.py --iters=20 --noloop \
    --nopeak
run resnet_memory --config=configs/cifar10.py --memory
run resnet_profile --config=configs/cifar10.py --iters=2 --noloop --nopeak \
    --profile_dir="$out/trace"
