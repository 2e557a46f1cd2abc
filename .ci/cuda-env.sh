# shellcheck shell=bash
# Sourced (not run) by .ci/cuda.sh and tests/gpu/run.sh: a CUDA 13 toolkit from NVIDIA's PyPI
# wheels, installed once under ${ORPOD_CACHE:-~/.cache/orpod}/cuda13, and the environment that
# candle's build scripts (cudaforge, cudarc) need to find and use it. See docs/gpu.md.
#
#   orpod_cuda_toolkit   nvcc, cicc, libdevice, headers (cccl too), cudart: enough to compile
#                        candle's kernels (`cargo check`/`clippy` with the cuda feature).
#   orpod_cuda_runtime   also nvrtc, cuBLAS and cuRAND, with the unversioned .so links the
#                        linker needs: enough to link and run `--features orpod/cuda` binaries
#                        (libcuda itself comes from the GPU driver).
#
# ORPOD_CUDA_MINOR (0-5, default 5) picks the CUDA 13.x release. On a GPU host it must not be
# newer than the driver's CUDA version (nvidia-smi's "CUDA Version"): candle's kernels are PTX,
# which the driver compiles when they load, and a driver refuses PTX from a newer nvcc.

# orpod_cuda_pins: the wheels of CUDA 13.$ORPOD_CUDA_MINOR (arrays ORPOD_CUDA_TOOLKIT_WHEELS and
# ORPOD_CUDA_RUNTIME_WHEELS). PyPI has no cccl of 13.4 or 13.5: 13.3.5.0.6 (CCCL 3.5) is the
# newest of the 13 line. cuBLAS 13.10 and cuRAND 10.4.5 are the newest of the CUDA 13 line and run
# on any CUDA 13 driver (minor version compatibility).
orpod_cuda_pins() {
    local nvcc rt nvrtc cccl
    case "${ORPOD_CUDA_MINOR:-5}" in
        5) nvcc=13.5.37 rt=13.5.37 nvrtc=13.5.37 cccl=13.3.5.0.6 ;;
        4) nvcc=13.4.92 rt=13.4.92 nvrtc=13.4.92 cccl=13.3.5.0.6 ;;
        3) nvcc=13.3.73 rt=13.3.29 nvrtc=13.3.33 cccl=13.3.5.0.6 ;;
        2) nvcc=13.2.86 rt=13.2.86 nvrtc=13.2.86 cccl=13.2.86 ;;
        1) nvcc=13.1.115 rt=13.1.80 nvrtc=13.1.115 cccl=13.1.115 ;;
        0) nvcc=13.0.88 rt=13.0.96 nvrtc=13.0.88 cccl=13.0.85 ;;
        *)
            echo "cuda: ORPOD_CUDA_MINOR='$ORPOD_CUDA_MINOR': no CUDA 13.x wheels known for it (0-5)" >&2
            return 1
            ;;
    esac
    ORPOD_CUDA_TOOLKIT_WHEELS=(
        "nvidia-cuda-nvcc==$nvcc"
        "nvidia-nvvm==$nvcc"
        "nvidia-cuda-crt==$nvcc"
        "nvidia-cuda-runtime==$rt"
        "nvidia-cuda-cccl==$cccl"
    )
    ORPOD_CUDA_RUNTIME_WHEELS=(
        "nvidia-cuda-nvrtc==$nvrtc"
        nvidia-cublas==13.10.0.20
        nvidia-curand==10.4.5.25
    )
}

# _orpod_cuda_pip_install DIR WHEEL...: the wheels into DIR with `pip install --target`, unless
# DIR/.stamp already lists exactly these pins. Installs into DIR.tmp, then renames.
_orpod_cuda_pip_install() {
    local dir="$1"
    shift
    local want
    want="$(printf '%s\n' "$@")"
    if [ -f "$dir/.stamp" ] && [ "$(cat "$dir/.stamp")" = "$want" ]; then
        return 0
    fi
    echo "cuda: installing $* into $dir" >&2
    rm -rf "$dir" "$dir.tmp"
    mkdir -p "$(dirname "$dir")"
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
        --no-deps --only-binary=:all: --target "$dir.tmp" "$@" || return 1
    printf '%s\n' "$want" >"$dir.tmp/.stamp"
    mv "$dir.tmp" "$dir"
}

# orpod_cuda_version: "13.5" from `nvcc --version` (the nvcc on PATH or $NVCC).
orpod_cuda_version() {
    "${NVCC:-nvcc}" --version | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\),.*/\1/p'
}

# orpod_cuda_toolkit: install (once) and export the toolkit's environment.
orpod_cuda_toolkit() {
    orpod_cuda_pins || return 1
    local cache="${ORPOD_CACHE:-$HOME/.cache/orpod}"
    local dir="$cache/cuda13/toolkit"
    _orpod_cuda_pip_install "$dir" "${ORPOD_CUDA_TOOLKIT_WHEELS[@]}" || return 1
    local root="$dir/nvidia/cu13"
    if [ ! -x "$root/bin/nvcc" ] || [ ! -x "$root/nvvm/bin/cicc" ] \
        || [ ! -f "$root/nvvm/libdevice/libdevice.10.bc" ] || [ ! -d "$root/include/cccl/cub" ]; then
        echo "cuda: $dir is incomplete (nvcc, cicc, libdevice or cccl missing); delete it and rerun" >&2
        return 1
    fi
    # cudaforge finds nvcc through NVCC, then PATH, then CUDA_HOME; cudarc's build script
    # takes its link search paths from CUDA_HOME, CUDA_PATH or CUDA_ROOT.
    export CUDA_ROOT="$root" CUDA_PATH="$root" CUDA_HOME="$root"
    export NVCC="$root/bin/nvcc"
    # nvcc.profile already puts nvvm/bin (cicc) and libdevice in reach; PATH has it for tools.
    export PATH="$root/bin:$root/nvvm/bin:$PATH"
    # The wheel's nvcc.profile adds include/cccl (cub, thrust, libcu++) as a system include; this
    # says it again so that an nvcc whose profile lacks it still finds those headers.
    case " ${NVCC_APPEND_FLAGS:-} " in
        *" $root/include/cccl "*) ;;
        *) export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:+$NVCC_APPEND_FLAGS }-isystem $root/include/cccl" ;;
    esac
    orpod_cuda_cudarc_version
    # candle-kernels compiles its .cu files on cudaforge's thread pool: one nvcc per core.
    CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"
    export CUDAFORGE_THREADS
}

# orpod_cuda_cudarc_version: cudarc 0.19.10 reads the toolkit's version from `nvcc --version`
# and panics on one it does not know (its newest is 13.4); CUDARC_CUDA_VERSION overrides that.
# 13.4's driver API is a subset of 13.5's, so 13040 is right for a 13.5 toolkit.
orpod_cuda_cudarc_version() {
    [ -n "${CUDARC_CUDA_VERSION:-}" ] && return 0
    local v
    v="$(orpod_cuda_version)"
    case "$v" in
        11.[4-8] | 12.[0-689] | 13.[0-4]) ;; # the versions cudarc 0.19.10 knows
        13.*) export CUDARC_CUDA_VERSION=13040 ;;
        *) echo "cuda: nvcc reports CUDA '$v'; cudarc 0.19.10 may not support it" >&2 ;;
    esac
}

# orpod_cuda_runtime: the toolkit, plus the libraries that `--features cuda` binaries link to.
orpod_cuda_runtime() {
    orpod_cuda_toolkit || return 1
    local cache="${ORPOD_CACHE:-$HOME/.cache/orpod}"
    local dir="$cache/cuda13/runtime"
    _orpod_cuda_pip_install "$dir" "${ORPOD_CUDA_RUNTIME_WHEELS[@]}" || return 1
    local lib="$dir/nvidia/cu13/lib" links="$cache/cuda13/link"
    # The wheels ship only versioned names (libcublas.so.13); `-lcublas` needs libcublas.so.
    mkdir -p "$links"
    local so base
    for so in "$lib"/lib*.so.* "$CUDA_ROOT"/lib/libcudart.so.*; do
        [ -e "$so" ] || continue
        base="$(basename "$so")"
        ln -sfn "$so" "$links/${base%%.so.*}.so"
    done
    # libcuda is the driver's; hosts without its -dev package have only libcuda.so.1.
    if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so '; then
        so="$(ldconfig -p 2>/dev/null | sed -n 's/.*libcuda\.so\.1 .*=> //p' | head -n 1)"
        if [ -n "$so" ]; then ln -sfn "$so" "$links/libcuda.so"; fi
    fi
    export LIBRARY_PATH="$links${LIBRARY_PATH:+:$LIBRARY_PATH}"
    export LD_LIBRARY_PATH="$lib:$CUDA_ROOT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}
