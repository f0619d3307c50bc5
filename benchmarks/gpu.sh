#!/usr/bin/env bash
# Run the benchmark suite on a GPU: the 1024 x (N = 1024, T = 128) target, then the qep_jax
# N-scaling routes. Exits with status 2 and a message when JAX sees no GPU.
#   benchmarks/gpu.sh                 # on a GPU machine (pip install -e '.[cuda,bench]' first)
#   benchmarks/gpu.sh --dry-run       # tiny sizes, runs on CPU: checks the script itself
# Results: benchmarks/results/gpu/ (gpu.json, scaling_n.json, ...). PYTHON selects the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
OUT="benchmarks/results/gpu"
if [[ "${1:-}" == "--dry-run" ]]; then
    OUT="${2:-$(mktemp -d)}"
    "$PY" benchmarks/gpu_bench.py --dry-run --out "$OUT"
    "$PY" benchmarks/scaling_n.py --tiny --in-process --routes ours-diag ours-cheap --out "$OUT"
    echo "dry run done: $OUT"
    exit 0
fi
if ! "$PY" -c 'import jax, sys; sys.exit(0 if any(d.platform == "gpu" for d in jax.devices()) else 1)' 2>/dev/null; then
    echo "gpu.sh: JAX sees no GPU (devices: $("$PY" -c 'import jax; print(jax.devices())' 2>/dev/null)); nothing run." >&2
    exit 2
fi
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > /dev/null 2>&1 \
    && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/nvidia-smi.txt" || true
"$PY" benchmarks/gpu_bench.py --out "$OUT"
"$PY" benchmarks/scaling_n.py --large --routes ours-diag ours-cheap ours-full ours-grad-cheap naive-cheap --out "$OUT"
echo "GPU results in $OUT"
