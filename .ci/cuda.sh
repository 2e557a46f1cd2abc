#!/usr/bin/env bash
# CI: the workspace with the cuda feature, type-checked and linted on a machine without a GPU.
# Installs (once) a CUDA 13 toolkit from PyPI wheels (.ci/cuda-env.sh), then runs clippy with
# orpod/cuda and orpo-trainer/cuda: that compiles candle's CUDA kernels with nvcc (build
# scripts) and checks every cfg(feature = "cuda") path. Nothing is linked against libcuda and
# nothing runs on a GPU: that is tests/gpu/run.sh, on a GPU host. ORPOD_SKIP_CUDA=1 skips it.
# Its own target dir (features would otherwise rebuild the CPU one): $CARGO_TARGET_DIR_CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${ORPOD_SKIP_CUDA:-0}" = 1 ]; then
    echo "cuda check: skipped (ORPOD_SKIP_CUDA=1)"
    exit 0
fi
start=$SECONDS
# shellcheck source=.ci/cuda-env.sh
. .ci/cuda-env.sh
orpod_cuda_toolkit
# No GPU to ask: build for sm_80 (A100); any cap >= 80 compiles the same kernels (bf16 WMMA).
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_CUDA:-${ORPOD_CACHE:-$HOME/.cache/orpod}/cuda-target}"
nvcc_version="$(orpod_cuda_version)"
echo "cuda: nvcc $nvcc_version ($NVCC), CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP," \
    "CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-unset}, target dir $CARGO_TARGET_DIR" >&2

cargo clippy --workspace --all-targets --features orpod/cuda,orpo-trainer/cuda -- -D warnings

echo "cuda check: ok (nvcc $nvcc_version, compute cap $CUDA_COMPUTE_CAP, $((SECONDS - start)) s)"
