#!/usr/bin/env bash
# Issue 8's GPU figures in one command, for a machine with an NVIDIA GPU and JAX built for it
# (TensorFlow need not be installed there: everything runs with KERAS_BACKEND=jax).
#   1. VGG16-size Adam, 1000 updates: verify's stream run (both rules and the comparison, one
#      JAX program on the GPU) against the emitted Adam's own compiled loop (bench_verify --ratio);
#   2. the peak host memory of `caffe2tf verify` at 20 and 1000 steps (bench_verify --memory).
# usage: bash bench/gpu_check.sh [OUTDIR]     (default bench/gpu-out; writes env.txt, ratio.txt,
#        memory.txt there). RECIPE, STEPS and DEVICE override the recipe, the ratio's updates and
#        --device (e.g. RECIPE=fixtures/lenet/solver.prototxt STEPS=20 DEVICE=cpu to try it on a
#        CPU). Record the figures in bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/gpu-out}"
recipe="${RECIPE:-bench/recipes/vgg16/solver_adam.prototxt}"
steps="${STEPS:-1000}"
device="${DEVICE:-gpu}"
mkdir -p "$out"
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
    date -u
    nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
    python3 -c "import jax, keras; print('jax', jax.__version__, 'keras', keras.__version__, jax.devices())"
} >"$out/env.txt" 2>&1
cat "$out/env.txt"
python3 bench/bench_verify.py --recipe "$recipe" --ratio --steps "$steps" --device "$device" \
    2>&1 | tee "$out/ratio.txt"
python3 bench/bench_verify.py --recipe "$recipe" --memory --steps 20 "$steps" --backends jax \
    --device "$device" 2>&1 | tee "$out/memory.txt"
