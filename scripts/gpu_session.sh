#!/usr/bin/env bash
# The accelerator issue's figures on a lent GPU, in the order the issue ranks them:
#   bash scripts/gpu_wheels.sh                       here, once: what the GPU image lacks, as wheels in .whl/
#   device run (carry [".whl"], timeout_s 600):  bash scripts/gpu_session.sh "$OUT" 570
#   if it stopped early, at once while the machine is warm:  bash scripts/gpu_session.sh "$OUT" SECONDS FIRST_STEP
# Steps: 1 environment, 2-4 training MFU (125M, 1.3B, 2.7B; bfloat16, T=2048), 5 decoding 1.3B
# against the weight-bandwidth bound (bfloat16 and int8 weights at batch 1 and 64; the int8 KV cache
# at a 2048-token context), 6 the GPU-only tests (cuDNN attention, greedy parity with the CPU),
# 7 evaluation and serving, 8 the sharded paths against the unplaced ones (125M). A step starts
# only if its minimum fits before the deadline and is stopped at its own limit; the script names the
# step to resume from. Rows go to OUT/rows.json and OUT/rows.md after every step (the benchmark
# writes each row as it is measured), the output to OUT/log.txt.
# That machine reaches no registry: its image's jax, flax, optax and orbax are used as they are.
# SMOKE=1 runs the same steps on the tiny shape, for checking the script on a CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: bash scripts/gpu_session.sh OUT_DIR [SECONDS [FIRST_STEP]]}"
deadline=$(( $(date +%s) + ${2:-570} ))
first="${3:-1}"
mkdir -p "$out" /tmp/neojax_rows
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
exec > >(tee -a "$out/log.txt") 2>&1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl failed"; exit 1; }
  export PYTHONPATH="/tmp/site:$PWD"
fi

if [ "${SMOKE:-0}" = 1 ]; then
  small=tiny mid=tiny big=tiny seq=64 batches=1,2 context=200 dtype=float32
else
  small=gpt-neo-125M mid=gpt-neo-1.3B big=gpt-neo-2.7B seq=2048 batches=1,64 context=2048 dtype=bfloat16
fi
[ "$first" = 1 ] && rm -rf /tmp/neojax_rows/*  # a resumed run keeps the rows of the steps before
bench() { local name=$1; shift; python3 -m neojax.benchmark --no_torch --dtype "$dtype" --seq_len "$seq" \
  --output "/tmp/neojax_rows/$name.json" "$@"; }
environment() {
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  python3 -c "import sys, jax, flax, optax, orbax.checkpoint as o; print(sys.version.split()[0], 'jax', jax.__version__,
    'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__); print(jax.devices())"
}
tests() {  # the GPU-only ones first (cuDNN attention, parity with the CPU), then the rest of their files
  local files="tests/model/test_attention.py tests/serve/test_engine.py tests/generate/test_generate.py"
  python3 -m pytest -q -p no:cacheprovider -p no:benchmark $files -k "accelerator or fused"
  [ "${SMOKE:-0}" = 1 ] ||
    python3 -m pytest -q -p no:cacheprovider -p no:benchmark $files -k "not accelerator and not fused"
}

export -f bench environment tests
export small mid big seq dtype
# step: name, minimum seconds to start it, its own limit, command
steps=(
  "environment|20|60|environment"
  "train $small|60|150|bench train_small --only train --presets $small --train_batch 32 --remat none"
  "train $mid|90|200|bench train_mid --only train --presets $mid --train_batch 8 --remat dots"
  "train $big|120|240|bench train_big --only train --presets $big --train_batch 8 --remat dots"
  "decode $mid|120|300|bench decode_mid --only decode --presets $mid --quantize int8 --decode_batches $batches \
     --kv_context $context"
  "tests on the device|60|180|tests"
  "evaluate and serve $small|120|300|bench serve_small --only eval,serve --presets $small"
  "sharded paths $small|60|180|bench mesh_small --only mesh --presets $small"
)
for i in "${!steps[@]}"; do
  n=$(( i + 1 ))
  [ "$n" -lt "$first" ] && continue
  IFS='|' read -r name minimum limit command <<< "${steps[$i]}"
  left=$(( deadline - $(date +%s) ))
  if [ "$left" -lt "$minimum" ]; then
    echo "== stopped before step $n ($name): ${left}s left; resume with FIRST_STEP=$n"
    break
  fi
  echo "== step $n: $name (limit $(( limit < left ? limit : left ))s)"
  start=$(date +%s)
  timeout -k 5 $(( limit < left ? limit : left )) bash -c "$command"
  echo "== step $n: $name: exit $? after $(( $(date +%s) - start ))s"
  python3 - "$out" <<'EOF'
import glob, json, sys
runs = [json.load(open(p)) for p in sorted(glob.glob("/tmp/neojax_rows/*.json"))]
rows = [dict(r, device=run["device"], date=run["date"]) for run in runs for r in run["rows"]]
json.dump(rows, open(f"{sys.argv[1]}/rows.json", "w"), indent=1)
lines = ["| benchmark | unit | neojax |", "|---|---|---|"]
lines += [f"| {r['name']} | {r['unit']} | {r['neojax']:,.2f} |" for r in rows]
open(f"{sys.argv[1]}/rows.md", "w").write("\n".join(lines) + "\n")
EOF
done
echo "== done at $(date -u +%H:%M:%S)"
