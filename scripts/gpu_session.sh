#!/usr/bin/env bash
# The GPU half of the accelerator and compression issues, as one run on a lent machine:
#   bash scripts/gpu_session.sh OUT_DIR        (on the device machine: OUT_DIR=$OUT)
# installs jax with CUDA, runs the GPU-only tests, then the benchmark rows the closing notes quote:
# training MFU (125M / 1.3B / 2.7B, bfloat16, T=2048), decoding at batch 1 and 64 against the
# weight-bandwidth bound (bfloat16 and int8 weights), each as JSON in OUT_DIR.
set -euo pipefail
out="${1:?usage: bash scripts/gpu_session.sh OUT_DIR}"
mkdir -p "$out"
python3 -m pip install --quiet -r requirements.txt "jax[cuda12]==$(python3 -c 'import jax; print(jax.__version__)' 2>/dev/null || echo 0.10.2)"
python3 -m pip install --quiet --no-deps -e .
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
python3 -c "import jax; print(jax.devices())" | tee -a "$out/device.txt"
python3 -m pytest -q tests/model/test_attention.py tests/generate/test_generate.py 2>&1 | tail -3 | tee "$out/tests.txt"
bench() { python3 -m neojax.benchmark --no_torch --dtype bfloat16 "$@"; }
bench --only train --presets gpt-neo-125M --train_batch 32 --remat none --output "$out/train_125m.json"
bench --only train,memory --presets gpt-neo-1.3B --train_batch 8 --remat dots --output "$out/train_1p3b.json"
bench --only train --presets gpt-neo-2.7B --train_batch 4 --remat full --output "$out/train_2p7b.json"
bench --only decode --presets gpt-neo-1.3B --quantize int8 --decode_batches 1,64 --output "$out/decode_1p3b.json"
bench --only decode --presets gpt-neo-125M --quantize int8 --decode_batches 1,64 --output "$out/decode_125m.json"
